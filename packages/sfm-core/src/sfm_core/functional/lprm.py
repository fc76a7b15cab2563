"""One local-pixel-relation step: a dilated 3x3 dynamic aggregation (METHOD.md §3.2)."""

from __future__ import annotations

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

TAPS = 9  # the 3x3 neighbourhood, tap n at offset (n // 3 - 1, n % 3 - 1) * dilation (dy, dx)


def check_lprm_arguments(v: torch.Tensor, logits: torch.Tensor, dilation: int) -> None:
    """Raise unless ``lprm_aggregate(v, logits, dilation)`` is well defined (shared by backends)."""
    check_tensor("v", v, ndim=4, shape_hint="[B, K, H, W]")
    check_tensor("logits", logits, ndim=4, shape_hint="[B, 9, H, W]")
    check_positive("dilation", dilation, integer=True)
    check_nonempty_map("v", v, "([B, K, H, W])")
    check_same_device(v=v, logits=logits)
    check_same_batch(v=v, logits=logits)
    if logits.shape[1] != TAPS:
        raise ValueError(
            f"logits must have 9 channels ([B, 9, H, W]), got shape {tuple(logits.shape)}"
        )
    if logits.shape[-2:] != v.shape[-2:]:
        raise ValueError(
            f"logits and v must share H, W, got logits {tuple(logits.shape)} and v {tuple(v.shape)}"
        )


def lprm_aggregate(v: torch.Tensor, logits: torch.Tensor, dilation: int) -> torch.Tensor:
    """``out(c, p) = sum_n softmax_n(logits)(p) * v(c, clamp(p + dilation * o_n))``.

    Args:
        v: values ``[B, K, H, W]``.
        logits: relation logits ``[B, 9, H, W]``; tap ``n`` sits at offset
            ``(n // 3 - 1, n % 3 - 1) * dilation`` in ``(dy, dx)``; the softmax runs over the 9.
        dilation: spacing of the taps in pixels; out-of-map taps read the nearest edge pixel
            (so any dilation of at least ``H - 1`` rows / ``W - 1`` columns reads the same edge).

    Returns:
        ``[B, K, H, W]`` in ``v.dtype``; the same 9 weights apply to every channel. ``B`` or
        ``K`` of 0 give an empty result; ``H, W`` must be at least 1.
    """
    check_lprm_arguments(v, logits, dilation)
    height, width = v.shape[-2:]
    dtype = compute_dtype(torch.promote_types(v.dtype, logits.dtype))
    if v.numel() == 0:
        return (v.to(dtype) + 0 * logits.to(dtype).sum()).to(v.dtype)
    weights = torch.softmax(logits.to(dtype), dim=1)
    # Clamped taps: a dilation past the map's extent reads the same edge pixels as H - 1 / W - 1,
    # so the padding (hence memory) stays bounded by the map whatever ``dilation`` is.
    step_y, step_x = min(dilation, height - 1), min(dilation, width - 1)
    padded = F.pad(v.to(dtype), (step_x, step_x, step_y, step_y), mode="replicate")
    out = torch.zeros_like(v, dtype=dtype)
    for tap in range(TAPS):
        dy, dx = (tap // 3) * step_y, (tap % 3) * step_x
        out = out + weights[:, tap : tap + 1] * padded[:, :, dy : dy + height, dx : dx + width]
    return out.to(v.dtype)
