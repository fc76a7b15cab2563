"""Multiply-accumulate counts of the SFM ops, for FlopCounterMode and fvcore.

One count per op, shared by every package: a backend's ``torch.utils.flop_counter`` formulas
(2 FLOPs per MAC, forward and backward ops, registered next to its ``sfm::*`` custom ops) and
fvcore handles (fvcore counts 1 per MAC and only sees the forward ops, which ``torch.jit.trace``
records as ``sfm::<name>``). Counts follow the op's definition, not one kernel's details.
fvcore itself is not needed here: the handles only read the traced values they are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Shape = Sequence[int]


def resample_macs(x_shape: Shape, grid_shape: Shape) -> int:
    """Bilinear: 4 corner MACs per output element."""
    batch, channels = x_shape[0], x_shape[1]
    return 4 * batch * channels * grid_shape[1] * grid_shape[2]


def resample_backward_macs(x_shape: Shape, grid_shape: Shape) -> int:
    """4 scatter MACs per output element for grad_x, 4 for each of the two grad_grid sums."""
    return 3 * resample_macs(x_shape, grid_shape)


def saliency_grid_macs(logits_shape: Shape, window: int) -> int:
    """Three window sums (weight, weight·x, weight·y) of (2P+1)² taps per pixel."""
    return 3 * (2 * window + 1) ** 2 * math.prod(logits_shape)


def gather_macs(z_shape: Shape, index_shape: Shape) -> int:
    """One MAC per tap and output element (index is ``[B, Ho, Wo, T]``: 4 taps for the default
    quads, 3 for triangles)."""
    return int(index_shape[3]) * z_shape[0] * z_shape[1] * index_shape[1] * index_shape[2]


def lprm_aggregate_macs(v_shape: Shape) -> int:
    """9 taps per output element."""
    return 9 * math.prod(v_shape)


def ms_deform_attn_macs(value_shape: Shape, locations_shape: Shape) -> int:
    """Per sampling point and channel: 4 bilinear corner MACs plus 1 for the attention weight.

    ``value_shape`` is ``[B, S, heads, C_h]``, ``locations_shape`` ``[B, Q, heads, L, P, 2]``.
    """
    return 5 * math.prod(locations_shape[:-1]) * value_shape[3]


def ms_deform_attn_backward_macs(value_shape: Shape, locations_shape: Shape) -> int:
    """Per point and channel: 4 (grad_value scatter) + 5 (resample and dot for grad_weights)
    + 8 (the two corner differences for grad_locations)."""
    return 17 * math.prod(locations_shape[:-1]) * value_shape[3]


def _sizes(value: Any) -> list[int]:
    """Shape of a JIT value as fvcore hands it over."""
    return list(value.type().sizes())


def _ints(value: Any) -> int:
    return int(value.toIValue())


def fvcore_handles() -> dict[str, Callable[[list[Any], list[Any]], int]]:
    """Handles for ``FlopCountAnalysis(...).set_op_handle(**fvcore_handles())`` (MAC counts)."""
    return {
        "sfm::resample": lambda inputs, outputs: resample_macs(
            _sizes(inputs[0]), _sizes(inputs[1])
        ),
        "sfm::saliency_grid": lambda inputs, outputs: saliency_grid_macs(
            _sizes(inputs[0]), _ints(inputs[1])
        ),
        "sfm::rasterize": lambda inputs, outputs: 0,  # index bookkeeping, no multiply-adds
        "sfm::gather": lambda inputs, outputs: gather_macs(_sizes(inputs[0]), _sizes(inputs[1])),
        "sfm::lprm_aggregate": lambda inputs, outputs: lprm_aggregate_macs(_sizes(inputs[0])),
        "sfm::ms_deform_attn": lambda inputs, outputs: ms_deform_attn_macs(
            _sizes(inputs[0]), _sizes(inputs[2])
        ),
    }
