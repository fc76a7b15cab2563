"""Optional edge-guidance loss (METHOD.md §1): pull ARS's saliency towards label boundaries.

Choices (the sources leave them open): labels are resized by nearest neighbour at pixel centres;
a boundary pixel is a valid pixel with a valid 4-neighbour of another label (both sides of an edge
are marked; ignored pixels never make a boundary); the blur is a separable Gaussian of width σ
truncated at 3σ with zero padding (nothing lies outside the image); the target and the
prediction (the spatial softmax of the logits, i.e. ``exp(A − max A)``) are each scaled to a
maximum of 1 per image, and an image without boundaries keeps an all-zero target. The squared error
is averaged over the valid pixels of the whole batch (0, still attached to the graph, when there
are none).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sfm_core._checks import (
    check_nonempty_map,
    check_positive,
    check_same_batch,
    check_same_device,
    check_tensor,
    compute_dtype,
)
from sfm_core.functional.positions import check_positions


def edge_guidance_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    sigma: float = 2.0,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the normalised saliency of ``logits`` and a blurred boundary map of ``labels``.

    Args:
        logits: ARS attention logits ``[B, 1, H, W]`` (:attr:`Resampled.logits`).
        labels: ground-truth class ids ``[B, Hl, Wl]``, any integer dtype, at any resolution.
        ignore_index: label of pixels that take no part (neither boundary nor loss).
        sigma: Gaussian blur of the boundary map, in pixels of the logits' resolution.
        positions: image positions ``[B, 2, H, W]`` of the logits' pixels (the composite
            positions of the ARS input; see :mod:`sfm_core.functional.positions`). Given, the
            target is built at the labels' own resolution (*full-resolution target*): boundaries
            found there, so 1–3 px structures that a nearest resize to ``H × W`` drops still
            count; blurred with ``sigma`` scaled to label pixels (``sigma·Hl/H``, ``sigma·Wl/W``);
            read bilinearly at ``positions``; a pixel takes part when the label nearest its
            position is not ignored. None: METHOD.md §1's target at ``H × W``.

    Returns:
        A scalar in float32 (float64 for float64 logits); 0 (attached to ``logits``) for batch 0.
        ``H, W`` and ``Hl, Wl`` must be at least 1.
    """
    check_tensor("logits", logits, ndim=4, shape_hint="[B, 1, H, W]")
    if logits.shape[1] != 1:
        raise ValueError(
            f"logits must have 1 channel ([B, 1, H, W]), got shape {tuple(logits.shape)}"
        )
    check_nonempty_map("logits", logits, "([B, 1, H, W])")
    check_tensor("labels", labels, ndim=3, floating=False, shape_hint="[B, Hl, Wl]")
    check_nonempty_map("labels", labels, "([B, Hl, Wl])")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index!r}")
    check_positive("sigma", sigma)
    check_same_device(logits=logits, labels=labels)
    check_same_batch(logits=logits, labels=labels)

    dtype = compute_dtype(logits.dtype)
    height, width = logits.shape[-2:]
    if positions is None:
        resized = _nearest(labels, (height, width))
        valid = _valid(resized, ignore_index)
        target = _blur(label_boundaries(resized, valid).to(dtype), sigma, sigma)
    else:
        check_positions(positions)
        check_same_device(logits=logits, positions=positions)
        if positions.shape[0] != logits.shape[0] or positions.shape[-2:] != logits.shape[-2:]:
            raise ValueError(
                f"positions must be [B, 2, H, W] like logits {tuple(logits.shape)}, "
                f"got {tuple(positions.shape)}"
            )
        full_valid = _valid(labels, ignore_index)
        scale_y, scale_x = labels.shape[1] / height, labels.shape[2] / width
        full = _blur(
            label_boundaries(labels, full_valid).to(dtype), sigma * scale_y, sigma * scale_x
        )
        grid = (2 * positions.detach().to(dtype) - 1).permute(0, 2, 3, 1)
        target = F.grid_sample(
            full[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )[:, 0]
        nearest = F.grid_sample(
            full_valid[:, None].to(dtype), grid, mode="nearest", padding_mode="border",
            align_corners=False,
        )  # fmt: skip
        valid = nearest[:, 0] > 0.5
    target = target / target.amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(dtype).tiny)

    a = logits[:, 0].to(dtype)
    prediction = torch.exp(a - a.amax(dim=(1, 2), keepdim=True))
    squared = (prediction - target).square()
    return squared[valid].sum() / valid.sum().clamp_min(1)


def _nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize at pixel centres (``floor((i + 0.5) * Hl / H)``)."""
    height, width = size
    rows = ((torch.arange(height, device=labels.device) + 0.5) * labels.shape[1] / height).long()
    cols = ((torch.arange(width, device=labels.device) + 0.5) * labels.shape[2] / width).long()
    return labels[:, rows.clamp_max(labels.shape[1] - 1)][:, :, cols.clamp_max(labels.shape[2] - 1)]


def _valid(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixels that take part; a dtype narrower than ``ignore_index`` cannot hold it: all do."""
    if _holds(labels.dtype, ignore_index):
        return labels != ignore_index
    return torch.ones_like(labels, dtype=torch.bool)


def _holds(dtype: torch.dtype, value: int) -> bool:
    """Whether integer ``dtype`` can represent ``value``."""
    info = torch.iinfo(dtype)
    return info.min <= value <= info.max


def label_boundaries(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Valid pixels with a valid 4-neighbour of another label ``[B, H, W]`` (bool).

    ``labels`` ``[B, H, W]`` (integer), ``valid`` the bool mask of pixels that take part.
    """
    edge = torch.zeros_like(valid)
    across_x = valid[:, :, 1:] & valid[:, :, :-1] & (labels[:, :, 1:] != labels[:, :, :-1])
    across_y = valid[:, 1:] & valid[:, :-1] & (labels[:, 1:] != labels[:, :-1])
    edge[:, :, 1:] |= across_x
    edge[:, :, :-1] |= across_x
    edge[:, 1:] |= across_y
    edge[:, :-1] |= across_y
    return edge


def _blur(maps: torch.Tensor, sigma_y: float, sigma_x: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, H, W]`` maps (σ per axis), truncated at 3σ, zero padding."""
    x = maps.unsqueeze(1)
    x = F.conv2d(x, _taps(sigma_x, maps.shape[-1], maps).view(1, 1, 1, -1), padding="same")
    x = F.conv2d(x, _taps(sigma_y, maps.shape[-2], maps).view(1, 1, -1, 1), padding="same")
    return x.squeeze(1)


def _taps(sigma: float, length: int, like: torch.Tensor) -> torch.Tensor:
    """Normalised Gaussian taps, radius ``ceil(3σ)`` capped at ``length``.

    Taps beyond the map's extent only meet the zero padding, so the radius is capped there
    (bounded memory for any σ). The taps are built in float64, where no positive σ underflows.
    """
    radius = max(1, min(math.ceil(3.0 * sigma), length))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=like.device)
    taps = torch.exp(-0.5 * (offsets / sigma).square())
    return (taps / taps.sum()).to(like.dtype)
