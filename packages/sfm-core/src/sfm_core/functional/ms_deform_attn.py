"""Multi-scale deformable attention (Deformable DETR's gather), the core of Mask2Former's encoder.

Pure PyTorch so that Mask2Former needs no compiled extension: its most common install failure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfm_core._checks import check_same_batch, check_same_device, check_tensor, compute_dtype


def check_spatial_shapes(spatial_shapes: object, value: torch.Tensor) -> list[tuple[int, int]]:
    """Return the levels' ``(H, W)`` after checking ``spatial_shapes`` against ``value``.

    ``spatial_shapes`` may live on the CPU (no device sync to read it) or on ``value``'s device.
    """
    shapes = check_tensor(
        "spatial_shapes", spatial_shapes, ndim=2, floating=False, shape_hint="[L, 2] (H, W)"
    )
    if shapes.dtype != torch.int64:
        raise TypeError(f"spatial_shapes must be int64, got {shapes.dtype}")
    if shapes.shape[1] != 2 or shapes.shape[0] < 1:
        raise ValueError(
            f"spatial_shapes must be [L, 2] (H, W) with L >= 1, got shape {tuple(shapes.shape)}"
        )
    if shapes.device.type != "cpu" and shapes.device != value.device:
        raise ValueError(
            f"spatial_shapes must be on the CPU or on value's device {value.device}, "
            f"got {shapes.device}"
        )
    levels = [(int(h), int(w)) for h, w in shapes.tolist()]
    if any(h < 1 or w < 1 for h, w in levels):
        raise ValueError(f"spatial_shapes must be positive, got {levels}")
    total = sum(h * w for h, w in levels)
    if value.shape[1] != total:
        raise ValueError(
            f"value must have S = sum(H*W) = {total} rows for spatial_shapes {levels}, "
            f"got shape {tuple(value.shape)}"
        )
    return levels


def check_ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> list[tuple[int, int]]:
    """Raise unless the four arguments agree with each other; return the levels' ``(H, W)``."""
    check_tensor("value", value, ndim=4, shape_hint="[B, S, heads, C_h]")
    check_tensor(
        "sampling_locations", sampling_locations, ndim=6, shape_hint="[B, Q, heads, L, P, 2]"
    )
    check_tensor("attention_weights", attention_weights, ndim=5, shape_hint="[B, Q, heads, L, P]")
    check_same_device(
        value=value, sampling_locations=sampling_locations, attention_weights=attention_weights
    )
    check_same_batch(
        value=value, sampling_locations=sampling_locations, attention_weights=attention_weights
    )
    levels = check_spatial_shapes(spatial_shapes, value)
    batch, queries, heads = attention_weights.shape[:3]
    expected = (batch, queries, heads, len(levels), attention_weights.shape[4], 2)
    if tuple(sampling_locations.shape) != expected:
        raise ValueError(
            f"sampling_locations must be [B, Q, heads, L, P, 2] = {expected} to match "
            f"attention_weights {tuple(attention_weights.shape)} and {len(levels)} levels, "
            f"got shape {tuple(sampling_locations.shape)}"
        )
    if value.shape[2] != heads:
        raise ValueError(
            f"value must have {heads} heads (as attention_weights), got shape {tuple(value.shape)}"
        )
    return levels


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Per query and head, the attention-weighted sum of bilinear samples of every level.

    ``out[b, q, h*C_h:(h+1)*C_h] = sum_{l, p} attention_weights[b, q, h, l, p] *
    bilinear(level l of value[b, :, h], sampling_locations[b, q, h, l, p])``: Deformable DETR's
    semantics exactly, so Mask2Former's weights carry over unchanged.

    Args:
        value: ``[B, S, heads, C_h]``, the levels' maps flattened row-major and concatenated
            (level ``l`` occupies ``H_l * W_l`` rows after the previous levels).
        spatial_shapes: ``[L, 2]`` int64 ``(H_l, W_l)``, on the CPU or on ``value``'s device.
        sampling_locations: ``[B, Q, heads, L, P, 2]`` normalised ``(x, y)``: 0 and 1 are the
            outer edges of the map (``align_corners=False``); taps outside the map read zero.
        attention_weights: ``[B, Q, heads, L, P]``, used as given (the caller's softmax).

    Returns:
        ``[B, Q, heads * C_h]`` in ``value.dtype``, computed in at least float32.
    """
    levels = check_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights)
    batch, _, heads, channels = value.shape
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    dtype = compute_dtype(
        torch.promote_types(
            torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
        )
    )
    # one (batch, head) pair per grid_sample image: [B*heads, C_h, H, W] against [B*heads, Q, P, 2]
    grids = (2 * sampling_locations.to(dtype) - 1).permute(0, 2, 3, 1, 4, 5)
    grids = grids.reshape(batch * heads, len(levels), queries, points, 2)
    weights = attention_weights.to(dtype).permute(0, 2, 3, 1, 4)
    weights = weights.reshape(batch * heads, 1, len(levels), queries, points)
    out = value.new_zeros(batch * heads, channels, queries, dtype=dtype)
    start = 0
    for level, (height, width) in enumerate(levels):
        maps = value[:, start : start + height * width].to(dtype)
        maps = maps.permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        start += height * width
        sampled = F.grid_sample(
            maps, grids[:, level], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [B*heads, C_h, Q, P]
        out = out + (sampled * weights[:, :, level]).sum(dim=-1)
    out = out.reshape(batch, heads * channels, queries).transpose(1, 2)
    return out.to(value.dtype).contiguous()
