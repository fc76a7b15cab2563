"""``resample`` on the CPU: aten's ``grid_sample`` forward, a one-pass numba backward.

aten's CPU ``grid_sampler_2d_backward`` zero-fills a C-channel input gradient and scatters into
it plane by plane, recomputing each output pixel's corner weights per channel. Here
``sfm::cpu_resample_backward`` computes the weights once per output pixel and loops over the
channels innermost in a channels-last layout, producing the input gradient (channels-last) and
the grid gradient in the same pass (with numba: the ``cpu`` extra). Without numba the reference
runs. The non-finite-grid handling is the reference's, around the op.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.jit._trace import is_tracing
from torch.utils.flop_counter import register_flop_formula

from sfm_core import functional as reference
from sfm_core._checks import check_nonempty_map, check_same_batch, check_same_device, check_tensor
from sfm_core.cpu import _jit
from sfm_core.flops import resample_backward_macs, resample_macs
from sfm_core.functional.resample import check_grid

KERNELS = "_resample_numba"
FAST_DTYPES = (torch.float32, torch.float64)
_BILINEAR, _BORDER = 0, 1


def _grid_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.library.custom_op("sfm::cpu_resample", mutates_args=(), device_types="cpu")
def _resample_op(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return _grid_sample(x, grid).contiguous()


@_resample_op.register_fake
def _resample_fake(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], x.shape[1], grid.shape[1], grid.shape[2])


@torch.library.custom_op("sfm::cpu_resample_backward", mutates_args=(), device_types="cpu")
def _resample_backward_op(
    grad: torch.Tensor, x: torch.Tensor, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_grid)``; ``grad_x`` channels-last, ``grad_grid`` contiguous."""
    kernels = _jit.kernels(KERNELS)
    if kernels is None:  # in a compiled graph, without numba
        grad_x, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad, x, grid, _BILINEAR, _BORDER, False, [True, True]
        )
        return grad_x.contiguous(memory_format=torch.channels_last), grad_grid.contiguous()
    batch, channels, height, width = x.shape
    grad_x_nhwc = torch.zeros(batch, height, width, channels, dtype=x.dtype)
    grad_grid = torch.empty(grid.shape, dtype=grid.dtype)
    kernels.backward(
        grad.permute(0, 2, 3, 1).contiguous().numpy(),
        x.permute(0, 2, 3, 1).contiguous().numpy(),
        grid.contiguous().numpy(),
        grad_x_nhwc.numpy(),
        grad_grid.numpy(),
    )
    return grad_x_nhwc.permute(0, 3, 1, 2), grad_grid


@_resample_backward_op.register_fake
def _resample_backward_fake(
    grad: torch.Tensor, x: torch.Tensor, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    return grad_x, torch.empty_like(grid, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, grid = ctx.saved_tensors
    grad_x, grad_grid = _resample_backward_op(grad, x, grid)
    return grad_x, grad_grid


_resample_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.sfm.cpu_resample)
def _resample_flops(x_shape: Any, grid_shape: Any, *args: Any, **kwargs: Any) -> int:
    """As aten's ``grid_sampler_2d`` (:mod:`sfm_core.flop_formulas`)."""
    return 2 * resample_macs(x_shape, grid_shape)


@register_flop_formula(torch.ops.sfm.cpu_resample_backward)
def _resample_backward_flops(
    grad_shape: Any, x_shape: Any, grid_shape: Any, *args: Any, **kwargs: Any
) -> int:
    """As aten's ``grid_sampler_2d_backward`` (grad_x and grad_grid)."""
    return 2 * resample_backward_macs(x_shape, grid_shape)


def resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Same function as :func:`sfm_core.functional.resample`.

    Without numba, for dtypes other than float32/float64 and for empty inputs: the reference.
    """
    check_tensor("x", x, ndim=4, shape_hint="[B, C, H, W]")
    check_nonempty_map("x", x, "([B, C, H, W])")
    check_grid(grid)
    check_same_device(x=x, grid=grid)
    check_same_batch(x=x, grid=grid)
    dtype = torch.promote_types(x.dtype, grid.dtype)
    if x.numel() == 0 or grid.numel() == 0 or dtype not in FAST_DTYPES:
        return reference.resample(x, grid)
    # A compiled graph cannot check for numba (an import): there the backward op decides.
    if not torch.compiler.is_compiling() and _jit.kernels(KERNELS) is None:
        return reference.resample(x, grid)
    finite = torch.isfinite(grid).all(dim=-1, keepdim=True)
    safe = torch.where(finite, grid, torch.zeros_like(grid))
    out: torch.Tensor = _resample_op(x.to(dtype), safe.to(dtype))
    if is_tracing() or torch.compiler.is_compiling() or not bool(finite.all()):
        out = out.masked_fill(~finite.view(out.shape[0], 1, *out.shape[2:]), float("nan"))
    return out.to(x.dtype)
