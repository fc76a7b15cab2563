"""``box_high_pass`` on the CPU: ARS's box average and high-pass as one pass per channel plane.

The reference runs two depthwise convolutions and a division, and their backward (oneDNN's
depthwise weight gradient is slow on the CPU). Here ``sfm::cpu_box_high_pass`` reads each plane
once forward and once backward (with numba: the ``cpu`` extra); without numba the reference runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import register_flop_formula

from sfm_core import functional as reference
from sfm_core.cpu import _jit
from sfm_core.functional.box_high_pass import check_box_high_pass_arguments

KERNELS = "_box_high_pass_numba"
FAST_DTYPES = (torch.float32, torch.float64)
BOX_MACS = 9  # the window sum (adds) per element; the kernel is 9 more MACs
KERNEL_MACS = 9
# Smaller maps take the reference: bench-ars measured the kernel 10-16 % slower than oneDNN's
# convolutions on resnet50's 56², 28² and 14² maps (2x faster at 64² x 512 channels).
MIN_PIXELS = 64 * 64


@torch.library.custom_op("sfm::cpu_box_high_pass", mutates_args=(), device_types="cpu")
def _box_high_pass_op(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    kernels = _jit.kernels(KERNELS)
    if kernels is None:  # in a compiled graph, without numba
        return reference.box_high_pass(x, kernel)
    out = torch.empty(x.shape, dtype=x.dtype)
    kernels.forward(
        x.contiguous().numpy(), kernel.reshape(-1, 3, 3).contiguous().numpy(), out.numpy()
    )
    return out


@_box_high_pass_op.register_fake
def _box_high_pass_fake(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("sfm::cpu_box_high_pass_backward", mutates_args=(), device_types="cpu")
def _box_high_pass_backward_op(
    grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    kernels = _jit.kernels(KERNELS)
    if kernels is None:
        leaves = (x.detach().requires_grad_(), kernel.detach().requires_grad_())
        with torch.enable_grad():
            out = reference.box_high_pass(*leaves)
        grad_x, grad_kernel = torch.autograd.grad(out, leaves, grad)
        return grad_x, grad_kernel
    grad_x = torch.empty(x.shape, dtype=x.dtype)
    grad_kernel = torch.zeros(kernel.shape[0], 3, 3, dtype=torch.float64)
    kernels.backward(
        grad.contiguous().numpy(),
        x.contiguous().numpy(),
        kernel.reshape(-1, 3, 3).contiguous().numpy(),
        grad_x.numpy(),
        grad_kernel.numpy(),
    )
    return grad_x, grad_kernel.view(kernel.shape).to(kernel.dtype)


@_box_high_pass_backward_op.register_fake
def _box_high_pass_backward_fake(
    grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(kernel)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, kernel = ctx.saved_tensors
    grad_x, grad_kernel = _box_high_pass_backward_op(grad, x, kernel)
    return grad_x, grad_kernel


_box_high_pass_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.sfm.cpu_box_high_pass)
def _box_high_pass_flops(x_shape: Any, *args: Any, **kwargs: Any) -> int:
    """The reference's two depthwise 3×3 convolutions: 2 FLOPs per MAC."""
    numel = 1
    for size in x_shape:
        numel *= size
    return 2 * (BOX_MACS + KERNEL_MACS) * numel


@register_flop_formula(torch.ops.sfm.cpu_box_high_pass_backward)
def _box_high_pass_backward_flops(grad_shape: Any, *args: Any, **kwargs: Any) -> int:
    """Input gradients of both convolutions and the kernel's gradient."""
    numel = 1
    for size in grad_shape:
        numel *= size
    return 2 * (BOX_MACS + 2 * KERNEL_MACS) * numel


def box_high_pass(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Same function as :func:`sfm_core.functional.box_high_pass`.

    Without numba, for dtypes other than float32/float64 and for empty maps: the reference.
    """
    check_box_high_pass_arguments(x, kernel)
    dtype = torch.promote_types(x.dtype, kernel.dtype)
    if x.numel() == 0 or dtype not in FAST_DTYPES or x.shape[-2] * x.shape[-1] < MIN_PIXELS:
        return reference.box_high_pass(x, kernel)
    # Without numba the reference's convolutions are the fast path; a compiled graph cannot
    # check for numba (an import), so there the op decides when it runs.
    if not torch.compiler.is_compiling() and _jit.kernels(KERNELS) is None:
        return reference.box_high_pass(x, kernel)
    out: torch.Tensor = _box_high_pass_op(x.to(dtype), kernel.to(dtype))
    return out
