"""``lprm_aggregate`` on the CPU: softmax (and gate) folded into nine weights, one fused kernel.

The op splits the aggregation in two: the weights ``W = softmax(logits)`` (with a gate ``α``:
``W' = α W + (1 − α) δ_centre``, so ``v + α (aggregate(v) − v)`` is one aggregation) are nine
planes that plain autograd differentiates; the weighted aggregation of the ``K`` channels is the
custom op ``sfm::cpu_lprm_aggregate``, whose backward needs only ``v`` and ``W`` (nothing
``K``-wide besides the input is kept). Its kernels are numba's when numba is installed, otherwise
a hand-fused PyTorch pair (:mod:`sfm_core.cpu._lprm_eager`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import register_flop_formula

from sfm_core import functional as reference
from sfm_core._checks import check_is_tensor, compute_dtype
from sfm_core.cpu import _jit, _lprm_eager
from sfm_core.flops import lprm_aggregate_macs
from sfm_core.functional.lprm import check_lprm_arguments

KERNELS = "_lprm_numba"
FAST_DTYPES = (torch.float32, torch.float64)
_CENTRE = 4


@torch.library.custom_op("sfm::cpu_lprm_aggregate", mutates_args=(), device_types="cpu")
def _aggregate_op(v: torch.Tensor, weights: torch.Tensor, dilation: int) -> torch.Tensor:
    kernels = _jit.kernels(KERNELS)
    if kernels is None:
        return _lprm_eager.forward(v, weights, dilation)
    out = torch.empty(v.shape, dtype=v.dtype)
    kernels.forward(
        v.contiguous().numpy(), weights.transpose(1, 2).contiguous().numpy(), dilation, out.numpy()
    )
    return out


@_aggregate_op.register_fake
def _aggregate_fake(v: torch.Tensor, weights: torch.Tensor, dilation: int) -> torch.Tensor:
    return torch.empty_like(v, memory_format=torch.contiguous_format)


@torch.library.custom_op("sfm::cpu_lprm_aggregate_backward", mutates_args=(), device_types="cpu")
def _aggregate_backward_op(
    grad: torch.Tensor, v: torch.Tensor, weights: torch.Tensor, dilation: int
) -> tuple[torch.Tensor, torch.Tensor]:
    kernels = _jit.kernels(KERNELS)
    if kernels is None:
        return _lprm_eager.backward(grad.contiguous(), v, weights, dilation)
    batch, _, height, width = v.shape
    grad_v = torch.empty(v.shape, dtype=v.dtype)
    grad_rows = torch.zeros(batch, height, 9, width, dtype=weights.dtype)
    kernels.backward(
        grad.contiguous().numpy(),
        v.contiguous().numpy(),
        weights.transpose(1, 2).contiguous().numpy(),
        dilation,
        grad_v.numpy(),
        grad_rows.numpy(),
    )
    return grad_v, grad_rows.transpose(1, 2)


@_aggregate_backward_op.register_fake
def _aggregate_backward_fake(
    grad: torch.Tensor, v: torch.Tensor, weights: torch.Tensor, dilation: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(v), torch.empty_like(weights)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    v, weights, dilation = inputs
    ctx.save_for_backward(v, weights)
    ctx.dilation = dilation


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    v, weights = ctx.saved_tensors
    grad_v, grad_weights = _aggregate_backward_op(grad, v, weights, ctx.dilation)
    return grad_v, grad_weights, None


_aggregate_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.sfm.cpu_lprm_aggregate)
def _aggregate_flops(v_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * lprm_aggregate_macs(v_shape)


@register_flop_formula(torch.ops.sfm.cpu_lprm_aggregate_backward)
def _aggregate_backward_flops(grad_shape: Any, *args: Any, **kwargs: Any) -> int:
    """grad_v (a 9-tap scatter) and grad_weights (a 9-tap dot per channel)."""
    return 4 * lprm_aggregate_macs(grad_shape)


def lprm_aggregate(v: torch.Tensor, logits: torch.Tensor, dilation: int) -> torch.Tensor:
    """Same function as :func:`sfm_core.functional.lprm_aggregate`."""
    return lprm_gated_aggregate(v, logits, dilation, None)


def lprm_gated_aggregate(
    v: torch.Tensor, logits: torch.Tensor, dilation: int, gate: torch.Tensor | None
) -> torch.Tensor:
    """``v + gate * (lprm_aggregate(v, logits, dilation) − v)`` (``gate=None``: no residual).

    Dtypes other than float32/float64 and empty maps take the reference.
    """
    check_lprm_arguments(v, logits, dilation)
    dtype = compute_dtype(torch.promote_types(v.dtype, logits.dtype))
    if v.numel() == 0 or dtype not in FAST_DTYPES or v.device.type != "cpu":
        out = reference.lprm_aggregate(v, logits, dilation)
        return out if gate is None else v + gate.to(v.dtype) * (out - v)
    weights = torch.softmax(logits.to(dtype), dim=1)
    if gate is not None:
        check_is_tensor(gate=gate)
        alpha = gate.to(dtype)
        centre = torch.zeros(1, 9, 1, 1, dtype=dtype)
        centre[:, _CENTRE] = 1.0
        weights = alpha * weights + (1 - alpha) * centre
    aggregated: torch.Tensor = _aggregate_op(v.to(dtype), weights, dilation)
    return aggregated.to(v.dtype)
