"""Saliency sampler grid: where ARS samples, from attention logits (METHOD.md §1, steps 2-3)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx
from torch.jit._trace import is_tracing

from sfm_core._checks import check_nonempty_map, check_positive, check_tensor, compute_dtype

# Settings the sampler accepts. A window wider than this is no longer "local" and its padding
# grows as (H + 2P)(W + 2P). Below MIN_FWHM every off-centre tap is exp(-2.8e6) = 0 already (the
# identity sampler), and a far smaller FWHM makes FWHM^2 round to 0 in float32: 0/0 = NaN taps.
# Below MIN_S_MIN the clamped saliency times a coordinate leaves float32's normal range.
MAX_WINDOW = 1024
MIN_FWHM = 1e-3
MIN_S_MIN = 1e-30


def check_saliency_settings(window: object, fwhm: object, s_min: object) -> None:
    """Raise unless ``window``, ``fwhm`` and ``s_min`` are settings the sampler can honour."""
    check_positive("window", window, integer=True, maximum=MAX_WINDOW)
    check_positive("fwhm", fwhm)
    check_positive("s_min", s_min)
    assert isinstance(fwhm, int | float)
    assert isinstance(s_min, int | float)
    if fwhm < MIN_FWHM:
        raise ValueError(
            f"fwhm must be at least {MIN_FWHM} pixels (smaller underflows the Gaussian), "
            f"got {fwhm!r}"
        )
    if not MIN_S_MIN <= s_min <= 1:
        raise ValueError(
            f"s_min must be in [{MIN_S_MIN}, 1] (smaller underflows float32), got {s_min!r}"
        )


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


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` reflect-padded by ``pad`` on every side, for any ``pad``.

    ``F.pad`` (a copy with a cheap backward) where it allows it, index gathers otherwise: the
    same values either way.
    """
    height, width = x.shape[-2:]
    if pad < height and pad < width:
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = reflect_indices(height, pad, x.device)
    cols = reflect_indices(width, pad, x.device)
    return x[:, :, rows][:, :, :, cols]


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
        window: half-size ``P`` of the averaging window (``2P+1`` pixels wide), at most
            ``MAX_WINDOW``.
        fwhm: full width at half maximum of the Gaussian, in pixels, at least ``MIN_FWHM``.
        s_min: lower clamp of the saliency ``exp(A - max A)``, so no window has zero weight;
            in ``[MIN_S_MIN, 1]``.

    Returns:
        ``[B, H, W, 2]`` grid of ``(x, y)`` in ``grid_sample`` convention (``align_corners=False``),
        in float32 (float64 for float64 logits). Clamped to the outer pixel centres; the x of the
        first/last column and the y of the first/last row are pinned to their identity values.
        Batch 0 gives an empty grid; ``H, W`` must be at least 1.
    """
    check_tensor("logits", logits, ndim=4, shape_hint="[B, 1, H, W]")
    if logits.shape[1] != 1:
        raise ValueError(
            f"logits must have 1 channel ([B, 1, H, W]), got shape {tuple(logits.shape)}"
        )
    check_nonempty_map("logits", logits, "([B, 1, H, W])")
    check_saliency_settings(window, fwhm, s_min)

    dtype = compute_dtype(logits.dtype)
    device = logits.device
    batch, _, height, width = logits.shape
    a = logits.to(dtype)
    saliency = torch.exp(a - a.amax(dim=(2, 3), keepdim=True)).clamp_min(s_min)

    padded = reflect_pad(saliency, window)  # [B, 1, H + 2P, W + 2P]
    # Coordinates continue the linear ramp into the padding (they are not reflected).
    xs = (torch.arange(-window, width + window, dtype=dtype, device=device) + 0.5) / width
    ys = (torch.arange(-window, height + window, dtype=dtype, device=device) + 0.5) / height

    taps = gaussian_taps(window, fwhm, dtype, device)
    along_x = taps.view(1, 1, 1, -1)
    along_y = taps.view(1, 1, -1, 1)
    # Separable filtering: horizontal pass on S and S*x, then vertical pass on those and on S*y.
    horizontal = correlate(
        torch.cat([padded, padded * xs], dim=1).view(-1, 1, *padded.shape[2:]), along_x
    )
    horizontal = horizontal.view(batch, 2, height + 2 * window, width)
    weight_sum = horizontal[:, :1]
    stacked = torch.cat([weight_sum, horizontal[:, 1:], weight_sum * ys.view(1, 1, -1, 1)], dim=1)
    vertical = correlate(stacked.view(-1, 1, *stacked.shape[2:]), along_y).view(
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
    # An image with a non-finite logit has no meaningful grid: all NaN, pinned border included,
    # so that the resampled map is NaN too instead of a plausible-looking warp.
    broken = ~torch.isfinite(a).flatten(1).all(dim=1)
    return torch.stack([gx, gy], dim=-1).masked_fill(broken.view(-1, 1, 1, 1), float("nan"))


def correlate(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, taps)`` (one channel, no padding) with a cheaper backward on CPU.

    The gradient of a valid correlation is the full convolution of the incoming gradient with the
    same taps: another forward ``conv2d``, several times faster than ``conv2d``'s CPU backward for
    a one-channel map. Traced and compiled graphs keep the plain ``conv2d`` (fvcore counts it;
    Dynamo derives its own backward).
    """
    if is_tracing() or torch.compiler.is_compiling():
        return F.conv2d(x, taps)
    return _Correlate.apply(x, taps)  # type: ignore[no-any-return]


class _Correlate(torch.autograd.Function):
    """Valid 2-D correlation of one-channel maps with fixed taps (no gradient to the taps)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(taps)
        return F.conv2d(x, taps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (taps,) = ctx.saved_tensors
        rows, cols = taps.shape[-2:]
        padded = F.pad(grad, (cols - 1, cols - 1, rows - 1, rows - 1))
        # Plain conv2d here: under create_graph it is recorded, so double backward works too.
        return F.conv2d(padded, taps.flip(-2, -1)), None
