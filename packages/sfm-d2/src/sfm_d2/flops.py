"""FLOP counting of SFM models with fvcore (what detectron2's ``tools/analyze_model.py`` uses).

fvcore counts one fused multiply-add as one FLOP and only the ops it has a handle for; it skips
element-wise ops (softmax, exp, add, mul, GELU...) and lists them as "unsupported" (counted 0).
:func:`sfm_handles` adds what the SFM path needs beyond fvcore's defaults:

* ``aten::grid_sampler`` by its interpolation mode: bilinear 4, bicubic 16, nearest 0 MACs per
  output element and channel (fvcore's default assumes bilinear for every mode);
* ``aten::avg_pool2d`` (ARS's 3×3 smoothing): ``kh·kw`` adds per output element;
* ``aten::embedding_bag`` (the reference non-uniform upsampling's gather): one MAC per bag
  member and channel, i.e. 4 (quads, the default) or 3 (triangles) per output element and
  channel, as ``sfm::gather``;
* the ``sfm::*`` custom ops a plug-in backend registers (sfm-triton; they appear in a trace only
  on its devices), with :func:`sfm_core.flops.fvcore_handles`, by the op definitions: ``resample`` 4 per output element and channel,
  ``saliency_grid`` 3·(2P+1)² per pixel (three window sums), ``gather`` one per tap (4 or 3) per output
  element and channel, ``lprm_aggregate`` 9 per output element; ``rasterize`` (index bookkeeping) 0.

On the reference path the saliency grid is not one op: fvcore sees and counts its two separable
1-D convolutions, (2·(H+2P)·W + 3·H·W)·(2P+1) MACs per map, which is what that path computes.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.jit import TracerWarning  # type: ignore[attr-defined]

from sfm_core.flops import fvcore_handles

Handle = Callable[[list[Any], list[Any]], int]

# aten::grid_sampler's interpolation_mode argument: 0 bilinear, 1 nearest, 2 bicubic.
GRID_SAMPLER_MACS = {0: 4, 1: 0, 2: 16}


def _shape(value: Any) -> list[int]:
    """Sizes of a traced tensor value."""
    return list(value.type().sizes())


def _constant(value: Any) -> Any:
    return value.toIValue()


def _int_list(value: Any) -> list[int]:
    """A traced int-list argument: a constant, or a ``prim::ListConstruct`` of constants."""
    constant = value.toIValue()
    if constant is not None:
        return [int(v) for v in constant]
    return [int(item.toIValue()) for item in value.node().inputs()]


def grid_sampler_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::grid_sampler``: per output element and channel, by interpolation mode."""
    mode = int(_constant(inputs[2]))
    return GRID_SAMPLER_MACS[mode] * math.prod(_shape(outputs[0]))


def avg_pool2d_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """Adds of ``aten::avg_pool2d``: one per kernel tap and output element."""
    kernel = _int_list(inputs[1])
    taps = kernel[0] * kernel[-1]
    return taps * math.prod(_shape(outputs[0]))


def embedding_bag_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::embedding_bag`` with per-sample weights: one per index and channel."""
    return math.prod(_shape(inputs[1])) * _shape(outputs[0])[-1]


def sfm_handles() -> dict[str, Handle]:
    """fvcore handles for ``FlopCountAnalysis(...).set_op_handle(**sfm_handles())``."""
    return {
        "aten::grid_sampler": grid_sampler_flops,
        "aten::avg_pool2d": avg_pool2d_flops,
        "aten::embedding_bag": embedding_bag_flops,
        **fvcore_handles(),
    }


def flop_count(model: nn.Module, *inputs: torch.Tensor) -> FlopCountAnalysis:
    """fvcore's analysis of ``model(*inputs)`` with :func:`sfm_handles`, quiet (no log spam).

    Tracing fixes the sizes of this one input, which is all a FLOP count needs, so the tracer's
    warnings about sizes turned into constants are not shown.
    """
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**sfm_handles())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TracerWarning)
        analysis.total()  # runs the trace now, inside the filter; results are cached
    return analysis


@dataclass(frozen=True)
class Overhead:
    """A backbone's parameters and fvcore GFLOPs with ARS off and on, and what fvcore skipped."""

    name: str
    params_off: int
    params_on: int
    ars_params: int
    flops_off: int
    flops_on: int
    unsupported_off: Counter[str]
    unsupported_on: Counter[str]

    @property
    def param_overhead(self) -> float:
        return self.params_on / self.params_off - 1.0

    @property
    def flop_overhead(self) -> float:
        return self.flops_on / self.flops_off - 1.0


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def backbone_overhead(
    name: str, cfg: CfgNode, size: tuple[int, int] = (512, 512), batch: int = 1
) -> Overhead:
    """Build ``cfg``'s backbone with its ``MODEL.SFM.ARS_STAGES`` and with ARS off, and count.

    Models are built in eval mode on the CPU with a fixed seed; the input is random
    ``[batch, C, *size]`` (FLOPs do not depend on the values).
    """
    counts = {}
    for ars in (False, True):
        variant = cfg.clone()
        variant.defrost()
        if not ars:
            variant.MODEL.SFM.ARS_STAGES = []
        variant.MODEL.DEVICE = "cpu"
        torch.manual_seed(0)
        model = build_backbone(variant).eval()
        x = torch.randn(batch, len(variant.MODEL.PIXEL_MEAN), *size)
        with torch.no_grad():
            analysis = flop_count(model, x)
        ars_params = sum(p.numel() for n, p in model.named_parameters() if "ars" in n.split("."))
        counts[ars] = (_params(model), ars_params, analysis.total(), analysis.unsupported_ops())
    (p_off, _, f_off, u_off), (p_on, a_on, f_on, u_on) = counts[False], counts[True]
    return Overhead(name, p_off, p_on, a_on, f_off, f_on, u_off, u_on)


def overhead_table(rows: Sequence[Overhead]) -> str:
    """A Markdown table of :func:`backbone_overhead` results."""
    header = (
        "| backbone | params off (M) | params on (M) | ARS params (M) | params +% "
        "| GFLOPs off | GFLOPs on | GFLOPs +% | unsupported ops off → on (kinds / calls) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params_off / 1e6:.2f} | {r.params_on / 1e6:.2f} "
            f"| {r.ars_params / 1e6:.3f} | {100 * r.param_overhead:.2f} "
            f"| {r.flops_off / 1e9:.2f} | {r.flops_on / 1e9:.2f} | {100 * r.flop_overhead:.2f} "
            f"| {len(r.unsupported_off)} / {sum(r.unsupported_off.values())} → "
            f"{len(r.unsupported_on)} / {sum(r.unsupported_on.values())} |"
        )
    return "\n".join(lines)
