"""Optional edge-guidance loss (SPEC section 1): pull ARS's saliency towards label boundaries.

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


def edge_guidance_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = 255, sigma: float = 2.0
) -> torch.Tensor:
    """MSE between the normalised saliency of ``logits`` and a blurred boundary map of ``labels``.

    Args:
        logits: ARS attention logits ``[B, 1, H, W]`` (:attr:`Resampled.logits`).
        labels: ground-truth class ids ``[B, Hl, Wl]``, any integer dtype, at any resolution.
        ignore_index: label of pixels that take no part (neither boundary nor loss).
        sigma: Gaussian blur of the boundary map, in pixels of the logits' resolution.

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
    resized = _nearest(labels, (height, width))
    # A label dtype narrower than ignore_index cannot hold it: no pixel is ignored then.
    if _holds(resized.dtype, ignore_index):
        valid = resized != ignore_index
    else:
        valid = torch.ones_like(resized, dtype=torch.bool)
    target = _blur(_boundaries(resized, valid).to(dtype), sigma)
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


def _holds(dtype: torch.dtype, value: int) -> bool:
    """Whether integer ``dtype`` can represent ``value``."""
    info = torch.iinfo(dtype)
    return info.min <= value <= info.max


def _boundaries(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Valid pixels with a valid 4-neighbour of another label ``[B, H, W]`` (bool)."""
    edge = torch.zeros_like(valid)
    across_x = valid[:, :, 1:] & valid[:, :, :-1] & (labels[:, :, 1:] != labels[:, :, :-1])
    across_y = valid[:, 1:] & valid[:, :-1] & (labels[:, 1:] != labels[:, :-1])
    edge[:, :, 1:] |= across_x
    edge[:, :, :-1] |= across_x
    edge[:, 1:] |= across_y
    edge[:, :-1] |= across_y
    return edge


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, H, W]`` maps, truncated at 3σ, zero padding.

    Taps beyond the map's extent only meet the zero padding, so the radius is capped there
    (bounded memory for any σ). The taps are built in float64, where no positive σ underflows.
    """
    radius = max(1, min(math.ceil(3.0 * sigma), max(maps.shape[-2:])))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=maps.device)
    taps = torch.exp(-0.5 * (offsets / sigma).square())
    taps = (taps / taps.sum()).to(maps.dtype)
    x = maps.unsqueeze(1)
    x = F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, radius))
    x = F.conv2d(x, taps.view(1, 1, -1, 1), padding=(radius, 0))
    return x.squeeze(1)
