"""ARS's smoothing and high-pass steps (METHOD.md §1, steps 1a and 1b) as one op."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.jit._trace import is_tracing

from sfm_core._checks import check_nonempty_map, check_same_device, check_tensor


def box_average(x: torch.Tensor) -> torch.Tensor:
    """3×3 mean over the pixels inside the map (``avg_pool2d(3, 1, 1, count_include_pad=False)``).

    A depthwise 3×3 convolution with ones, divided by the number of pixels inside each window:
    the same values up to the order of the nine-term sum (fp32 rounding), several times faster
    than CPU average pooling, forward and backward. A traced graph (fvcore's FLOP count) shows
    the average pooling that defines it.
    """
    if is_tracing():
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    channels, height, width = x.shape[1:]
    ones = torch.ones(channels, 1, 3, 3, dtype=x.dtype, device=x.device)
    total = F.conv2d(x, ones, padding=1, groups=channels)
    return total.div_(_inside(height, total).unsqueeze(-1) * _inside(width, total))


def _inside(length: int, like: torch.Tensor) -> torch.Tensor:
    """How many of the three taps centred on each position fall inside an axis of ``length``."""
    count = torch.full((length,), 3.0, dtype=like.dtype, device=like.device)
    count[0] -= 1
    count[-1] -= 1
    return count


def check_box_high_pass_arguments(x: torch.Tensor, kernel: torch.Tensor) -> None:
    """Raise unless ``box_high_pass(x, kernel)`` is well defined (shared by backends)."""
    check_tensor("x", x, ndim=4, shape_hint="[B, C, H, W]")
    check_nonempty_map("x", x, "([B, C, H, W])")
    check_tensor("kernel", kernel, ndim=4, shape_hint="[C, 1, 3, 3]")
    check_same_device(x=x, kernel=kernel)
    if tuple(kernel.shape) != (x.shape[1], 1, 3, 3):
        raise ValueError(
            f"kernel must be [C, 1, 3, 3] with C = {x.shape[1]} (x's channels), "
            f"got shape {tuple(kernel.shape)}"
        )


def box_high_pass(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``kernel ⋆ box_average(x)``: a per-channel 3×3 kernel (zero padding) on the 3×3 mean.

    Args:
        x: features ``[B, C, H, W]``.
        kernel: depthwise kernel ``[C, 1, 3, 3]`` (``F.conv2d``'s layout, a cross-correlation);
            the learnable high-pass ``2δ − softmax₉(w_c)`` in ARS.

    Returns:
        ``[B, C, H, W]`` in the promoted dtype of ``x`` and ``kernel``.
    """
    check_box_high_pass_arguments(x, kernel)
    dtype = torch.promote_types(x.dtype, kernel.dtype)
    smoothed = box_average(x.to(dtype))
    return F.conv2d(smoothed, kernel.to(dtype), padding=1, groups=x.shape[1])
