"""What a trained SFM model does inside: aliasing per downsampling layer, ARS grids and saliency,
parameters and FLOPs. Works on the baseline too (no ARS: no grids, same layers)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.jit import TracerWarning  # type: ignore[attr-defined]

from sfm_core.analysis import LayerAliasing, aliasing_report
from sfm_core.functional import compose_positions, nonuniform
from sfm_core.insertion import is_downsampling
from sfm_d2.flops import sfm_handles
from sfm_d2.modeling.backbone.levels import LEVELS
from sfm_d2.modeling.backbone.outputs import positions_key
from sfm_d2.modeling.backbone.swin_layers import PatchMerging


def downsampling_layers(backbone: nn.Module) -> dict[str, str]:
    """``{module name: layout}`` of the backbone's downsampling layers, in module order.

    Strided convs / pools (``"nchw"``) and Swin's patch mergings (``"nhwc"``, stride 2); the
    layers inside the ARS modules (their attention generators) are not on the feature path.
    """
    layers = {}
    for name, module in backbone.named_modules():
        if name.split(".")[0] == "ars":
            continue
        if isinstance(module, PatchMerging):
            layers[name] = "nhwc"
        elif is_downsampling(module):
            layers[name] = "nchw"
    return layers


def model_aliasing(
    backbone: nn.Module, batches: Sequence[torch.Tensor]
) -> tuple[LayerAliasing, ...]:
    """Mean aliasing ratio (SPEC section 5) at the input of every downsampling layer over ``batches``.

    Each patch merging is a stride-2 layer; convs and pools use their own stride.
    """
    layers = downsampling_layers(backbone)
    found: dict[str, LayerAliasing] = {}
    for layout in ("nchw", "nhwc"):
        names = [name for name, kind in layers.items() if kind == layout]
        if not names:
            continue
        stride = 2 if layout == "nhwc" else None
        report = aliasing_report(backbone, batches, names=names, stride=stride, layout=layout)
        found.update({layer.name: layer for layer in report.layers})
    return tuple(found[name] for name in layers)


@torch.no_grad()
def downsampling_inputs(backbone: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{layer: NCHW map}``: what enters each downsampling layer for ``batch`` (for spectra)."""
    layers = downsampling_layers(backbone)
    modules = dict(backbone.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, layout in layers.items():

        def hook(
            _module: nn.Module,
            args: tuple[Any, ...],
            name: str = name,
            nhwc: bool = layout == "nhwc",
        ) -> None:
            captured[name] = args[0].movedim(-1, -3) if nhwc else args[0]

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        backbone(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: captured[name].detach() for name in layers if name in captured}


@dataclass(frozen=True)
class ArsView:
    """One ARS module seen on a batch: where it samples the *image*, and its saliency."""

    stage: str  # the stage whose input ARS resamples ("res3"...)
    positions: torch.Tensor  # [B, h, w, 2] image positions of its samples, grid_sample convention
    saliency: torch.Tensor  # [B, 1, h, w] exp(A - max A), as the saliency sampler weighs pixels


@torch.no_grad()
def ars_views(backbone: nn.Module, batch: torch.Tensor) -> list[ArsView]:
    """Every ARS of an SFM backbone on ``batch``; empty for a backbone without ARS.

    The grid an ARS returns is relative to its own input map, which already lives on the warped
    lattice of earlier ARS; composing it with the input's positions (SPEC section 2) gives where
    each sample sits in the image.
    """
    ars_modules = getattr(backbone, "ars", None)
    if not ars_modules:
        return []
    grids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for stage, module in ars_modules.items():

        def hook(_module: nn.Module, _args: Any, output: Any, stage: str = stage) -> None:
            grids[stage] = (output.grid, output.logits)

        handles.append(module.register_forward_hook(hook))
    try:
        outputs = backbone(batch)
    finally:
        for handle in handles:
            handle.remove()
    views = []
    for stage, (grid, logits) in grids.items():
        previous = LEVELS[LEVELS.index(stage) - 1]
        key = positions_key(previous)
        if key not in outputs:
            raise ValueError(f"the backbone must return {key!r} to place the ARS of {stage}")
        composed = compose_positions(outputs[key], grid)  # [B, 2, h, w] in (0, 1)
        logits = logits.float()
        saliency = torch.exp(logits - logits.amax(dim=(2, 3), keepdim=True))
        views.append(ArsView(stage, (2 * composed - 1).permute(0, 2, 3, 1), saliency))
    return views


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _SemSegScores(nn.Module):
    """``image -> [K, H, W]`` scores of a detectron2 model, for fvcore's tracer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        return self.model([{"image": image, "height": height, "width": width}])[0]["sem_seg"]  # type: ignore[no-any-return]


def _additive_attn_mask(
    _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A boolean ``attn_mask`` as the equivalent additive float mask (-inf where blocked).

    ``nn.MultiheadAttention`` converts a boolean mask with an in-place ``masked_fill_``, which
    torch's ONNX-style tracer (the one fvcore uses) cannot alias-analyse on current torch.
    """
    mask = kwargs.get("attn_mask")
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        query = kwargs["query"] if "query" in kwargs else args[0]
        additive = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device)
        kwargs = {**kwargs, "attn_mask": additive.masked_fill(mask, float("-inf"))}
    return args, kwargs


def embedding_bag_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::embedding_bag`` with per-sample weights (the reference non-uniform
    upsampling's gather): one per bag member and channel, 3 per output element and channel."""
    indices = math.prod(inputs[1].type().sizes())
    channels = outputs[0].type().sizes()[-1]
    return int(indices * channels)


@contextmanager
def _untraced_rasterize() -> Iterator[None]:
    """Run the reference ``rasterize`` outside the tracer while FLOPs are counted.

    It is index bookkeeping (no multiply-adds, as :mod:`sfm_d2.flops` counts it) and uses an
    in-place boolean ``index_fill_`` that the tracer cannot alias-analyse; outside the trace its
    indices and weights enter the graph as constants, and the gather that uses them is counted.
    """
    original = nonuniform.rasterize

    def rasterize(positions: torch.Tensor, size: tuple[int, int]) -> Any:
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return original(positions, size)
        finally:
            torch._C._set_tracing_state(state)

    nonuniform.rasterize = rasterize
    try:
        yield
    finally:
        nonuniform.rasterize = original


def count_flops(model: nn.Module, image: torch.Tensor) -> tuple[int, dict[str, int]]:
    """fvcore FLOPs (1 per multiply-add) of inference on ``image``, and the ops fvcore skipped.

    Handles: :func:`sfm_d2.flops.sfm_handles` plus the reference gather (``embedding_bag``).
    """
    handles = [
        module.register_forward_pre_hook(_additive_attn_mask, with_kwargs=True)
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
    ]
    analysis = FlopCountAnalysis(_SemSegScores(model).eval(), (image,))
    analysis.set_op_handle(**sfm_handles(), **{"aten::embedding_bag": embedding_bag_flops})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    try:
        with torch.no_grad(), _untraced_rasterize(), warnings.catch_warnings():
            warnings.simplefilter("ignore", TracerWarning)
            total = int(analysis.total())
    finally:
        for handle in handles:
            handle.remove()
    return total, dict(analysis.unsupported_ops())


def collect_batches(images: Iterable[torch.Tensor], size: int) -> list[list[torch.Tensor]]:
    """``images`` in lists of at most ``size`` (the last may be shorter)."""
    groups: list[list[torch.Tensor]] = [[]]
    for image in images:
        if len(groups[-1]) == size:
            groups.append([])
        groups[-1].append(image)
    return [group for group in groups if group]
