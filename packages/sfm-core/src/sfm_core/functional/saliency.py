"""Saliency sampler grid: where ARS samples, from attention logits (SPEC section 1, steps 2-3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sfm_core._checks import check_positive, check_tensor, compute_dtype


def reflect_indices(length: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a reflect padding by ``pad`` of a ``length``-long axis, for any ``pad``.

    ``F.pad(mode="reflect")`` refuses ``pad >= length``; small late-stage maps need more, so the
    reflection is continued periodically (period ``2 * (length - 1)``, edge not repeated).
    """
    positions = torch.arange(-pad, length + pad, device=device)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    folded = positions.remainder(period)
    return torch.where(folded < length, folded, period - folded)


def gaussian_taps(
    window: int, fwhm: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The 1-D factor of k(a, b) = exp(-4 ln2 (a^2 + b^2) / FWHM^2) on a = -window..window."""
    offsets = torch.arange(-window, window + 1, dtype=dtype, device=device)
    return torch.exp(-4.0 * math.log(2.0) * offsets.square() / (fwhm * fwhm))


def saliency_grid(
    logits: torch.Tensor, *, window: int = 5, fwhm: float = 3.0, s_min: float = 1e-3
) -> torch.Tensor:
    """Sampling grid of the saliency sampler: Gaussian-weighted averaging of pixel coordinates.

    Args:
        logits: attention logits ``[B, 1, H, W]``; any floating dtype.
        window: half-size ``P`` of the averaging window (``2P+1`` pixels wide).
        fwhm: full width at half maximum of the Gaussian, in pixels.
        s_min: lower clamp of the saliency ``exp(A - max A)``, so no window has zero weight.

    Returns:
        ``[B, H, W, 2]`` grid of ``(x, y)`` in ``grid_sample`` convention (``align_corners=False``),
        in float32 (float64 for float64 logits). Clamped to the outer pixel centres; the x of the
        first/last column and the y of the first/last row are pinned to their identity values.
    """
    check_tensor("logits", logits, ndim=4, shape_hint="[B, 1, H, W]")
    if logits.shape[1] != 1:
        raise ValueError(
            f"logits must have 1 channel ([B, 1, H, W]), got shape {tuple(logits.shape)}"
        )
    check_positive("window", window, integer=True)
    check_positive("fwhm", fwhm)
    check_positive("s_min", s_min)
    if s_min > 1:
        raise ValueError(f"s_min must be in (0, 1], got {s_min!r}")

    dtype = compute_dtype(logits.dtype)
    device = logits.device
    batch, _, height, width = logits.shape
    a = logits.to(dtype)
    saliency = torch.exp(a - a.amax(dim=(2, 3), keepdim=True)).clamp_min(s_min)

    rows = reflect_indices(height, window, device)
    cols = reflect_indices(width, window, device)
    padded = saliency[:, :, rows][:, :, :, cols]  # [B, 1, H + 2P, W + 2P]
    # Coordinates continue the linear ramp into the padding (they are not reflected).
    xs = (torch.arange(-window, width + window, dtype=dtype, device=device) + 0.5) / width
    ys = (torch.arange(-window, height + window, dtype=dtype, device=device) + 0.5) / height

    taps = gaussian_taps(window, fwhm, dtype, device)
    along_x = taps.view(1, 1, 1, -1)
    along_y = taps.view(1, 1, -1, 1)
    # Separable filtering: horizontal pass on S and S*x, then vertical pass on those and on S*y.
    horizontal = F.conv2d(
        torch.cat([padded, padded * xs], dim=1).view(-1, 1, *padded.shape[2:]), along_x
    )
    horizontal = horizontal.view(batch, 2, height + 2 * window, width)
    weight_sum = horizontal[:, :1]
    stacked = torch.cat([weight_sum, horizontal[:, 1:], weight_sum * ys.view(1, 1, -1, 1)], dim=1)
    vertical = F.conv2d(stacked.view(-1, 1, *stacked.shape[2:]), along_y).view(
        batch, 3, height, width
    )
    u = vertical[:, 1] / vertical[:, 0]
    v = vertical[:, 2] / vertical[:, 0]

    gx = (2.0 * u - 1.0).clamp(-1.0 + 1.0 / width, 1.0 - 1.0 / width)
    gy = (2.0 * v - 1.0).clamp(-1.0 + 1.0 / height, 1.0 - 1.0 / height)
    identity_x = (2.0 * torch.arange(width, dtype=dtype, device=device) + 1.0) / width - 1.0
    identity_y = (2.0 * torch.arange(height, dtype=dtype, device=device) + 1.0) / height - 1.0
    edge_col = torch.zeros(width, dtype=torch.bool, device=device)
    edge_col[[0, -1]] = True
    edge_row = torch.zeros(height, dtype=torch.bool, device=device)
    edge_row[[0, -1]] = True
    gx = torch.where(edge_col.view(1, 1, -1), identity_x.view(1, 1, -1), gx)
    gy = torch.where(edge_row.view(1, -1, 1), identity_y.view(1, -1, 1), gy)
    return torch.stack([gx, gy], dim=-1)
