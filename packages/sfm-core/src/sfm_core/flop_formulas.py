"""FlopCounterMode formulas for the aten ops the SFM reference runs on (importing registers them).

``torch.utils.flop_counter.FlopCounterMode`` counts only ops that have a formula, and PyTorch has
none for ``grid_sample`` (the reference ``resample`` and ``compose_positions``) or for the
weighted embedding bag (the reference ``gather`` of ``nonuniform_upsample``), so a model with
ARS or MSAU looked cheaper than it is. The counts are the shared MAC counts of
:mod:`sfm_core.flops` (2 FLOPs per MAC, FlopCounterMode's convention). The reference
``saliency_grid`` runs on ``conv2d``, which PyTorch already counts (its separable passes).
:mod:`sfm_core.insertion` imports this module, so wrapped models are counted without more ado.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from sfm_core.flops import resample_backward_macs, resample_macs

aten = torch.ops.aten

# grid_sampler_2d's interpolation_mode: 0 bilinear (4 taps), 1 nearest (a copy), 2 bicubic (16).
_TAPS = {0: 4, 1: 0, 2: 16}

Formula = Callable[..., int]


def _register(*ops: Any) -> Callable[[Formula], Formula]:
    """``register_flop_formula`` for the ops not registered yet (a reload must not raise)."""

    def decorate(formula: Formula) -> Formula:
        fresh = [op for op in ops if op not in flop_registry]
        if fresh:
            register_flop_formula(fresh)(formula)
        return formula

    return decorate


@_register(aten.grid_sampler_2d)
def grid_sampler_flops(
    x_shape: Any, grid_shape: Any, interpolation_mode: int, *args: Any, **kwargs: Any
) -> int:
    """Bilinear: :func:`sfm_core.flops.resample_macs`; other modes scale by their taps."""
    return 2 * resample_macs(x_shape, grid_shape) * _TAPS.get(interpolation_mode, 4) // 4


@_register(aten.grid_sampler_2d_backward)
def grid_sampler_backward_flops(
    grad_shape: Any,
    x_shape: Any,
    grid_shape: Any,
    interpolation_mode: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    """Bilinear: :func:`sfm_core.flops.resample_backward_macs` (grad_x and grad_grid)."""
    return 2 * resample_backward_macs(x_shape, grid_shape) * _TAPS.get(interpolation_mode, 4) // 4


def _bag_macs(weight_shape: Any, indices_shape: Any) -> int:
    """One MAC per gathered value: ``len(indices) * embedding_dim``.

    With T indices per output pixel (4 quads, 3 triangles) this is
    :func:`sfm_core.flops.gather_macs`.
    """
    return int(torch.Size(indices_shape).numel()) * int(weight_shape[1])


@_register(aten._embedding_bag, aten._embedding_bag_forward_only)
def embedding_bag_flops(weight_shape: Any, indices_shape: Any, *args: Any, **kwargs: Any) -> int:
    """A weighted (or plain) sum of rows: 2 FLOPs per gathered value."""
    return 2 * _bag_macs(weight_shape, indices_shape)


@_register(aten._embedding_bag_backward)
def embedding_bag_backward_flops(
    grad_shape: Any,
    indices_shape: Any,
    offsets_shape: Any,
    offset2bag_shape: Any,
    *args: Any,
    **kwargs: Any,
) -> int:
    """Scatter-add of the (weighted) output gradient into the table: 2 FLOPs per gathered value."""
    return 2 * int(torch.Size(indices_shape).numel()) * int(grad_shape[1])


@_register(aten._embedding_bag_per_sample_weights_backward)
def embedding_bag_weights_backward_flops(
    grad_shape: Any, weight_shape: Any, indices_shape: Any, *args: Any, **kwargs: Any
) -> int:
    """One dot product of a gradient row and a table row per gathered value."""
    return 2 * _bag_macs(weight_shape, indices_shape)
