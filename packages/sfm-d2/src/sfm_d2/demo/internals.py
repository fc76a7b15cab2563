"""What a trained SFM model does inside: aliasing per downsampling layer, ARS grids and saliency,
parameters and FLOPs. Works on the baseline too (no ARS: no grids, same layers)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sfm_core.analysis import CONTROLS, LayerAliasing, aliasing_report
from sfm_core.analysis.controls import resampling_modules
from sfm_core.functional import compose_positions
from sfm_core.insertion import is_downsampling
from sfm_core.nn import ars_diagnostics, label_detail
from sfm_d2.flops import flop_count
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
    backbone: nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    control: str = "own",
    shift: float = 0.5,
) -> tuple[LayerAliasing, ...]:
    """Mean aliasing ratio (METHOD.md §5) at the input of every downsampling layer over ``batches``.

    Each patch merging is a stride-2 layer; convs and pools use their own stride. ``control``
    picks the grid every ARS resamples at (:mod:`sfm_core.analysis.controls`): ``"own"`` (the
    model as trained), ``"other"`` (another image's grid), ``"shift"`` (a uniform ``shift``-pixel
    shift) or ``"identity"`` (no resampling).
    """
    layers = downsampling_layers(backbone)
    found: dict[str, LayerAliasing] = {}
    for layout in ("nchw", "nhwc"):
        names = [name for name, kind in layers.items() if kind == layout]
        if not names:
            continue
        stride = 2 if layout == "nhwc" else None
        report = aliasing_report(
            backbone,
            batches,
            names=names,
            stride=stride,
            layout=layout,
            control=control,
            shift=shift,
        )
        found.update({layer.name: layer for layer in report.layers})
    return tuple(found[name] for name in layers)


def aliasing_controls(
    backbone: nn.Module, batches: Sequence[torch.Tensor], *, shift: float = 0.5
) -> dict[str, tuple[LayerAliasing, ...]]:
    """:func:`model_aliasing` under every control but ``"own"``; empty for a backbone without ARS.

    Own below these means the grids' placement matters; own equal to them means the drop in
    aliasing is bilinear interpolation acting as a blur.
    """
    if not resampling_modules(backbone):
        return {}
    if len(batches) > 1 and batches[-1].shape[0] == 1:  # "other" needs two images per batch
        batches = [*batches[:-2], torch.cat([batches[-2], batches[-1]])]
    return {
        control: model_aliasing(backbone, batches, control=control, shift=shift)
        for control in CONTROLS
        if control != "own"
    }


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
    lattice of earlier ARS; composing it with the input's positions (METHOD.md §2) gives where
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


@torch.no_grad()
def ars_diagnostics_over(
    backbone: nn.Module,
    batches: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    *,
    ignore_label: int = 255,
) -> dict[str, dict[str, float]]:
    """``{stage: diagnostics}`` of every ARS over all images of ``batches``; empty without ARS.

    :func:`sfm_core.nn.ars_diagnostics` on the grids, logits and input positions of all images at
    once, with detail from the ground truth (:func:`sfm_core.nn.label_detail` of the
    full-resolution labels). ``labels`` are the images' ``[H, W]`` maps in batch order; each is
    padded with ``ignore_label`` to its batch's (size-divisible) image size.
    """
    ars_modules = getattr(backbone, "ars", None)
    if not ars_modules:
        return {}
    found: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
        stage: [] for stage in ars_modules
    }
    details = []
    remaining = list(labels)
    for batch in batches:
        height, width = batch.shape[-2:]
        for label in remaining[: batch.shape[0]]:
            padded = torch.full((height, width), ignore_label, dtype=torch.int64)
            padded[: label.shape[0], : label.shape[1]] = label
            details.append(padded)
        remaining = remaining[batch.shape[0] :]
        grids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = []
        for stage, module in ars_modules.items():

            def hook(
                _module: nn.Module,
                _args: Any,
                output: Any,
                stage: str = stage,
                grids: dict[str, tuple[torch.Tensor, torch.Tensor]] = grids,
            ) -> None:
                grids[stage] = (output.grid, output.logits)

            handles.append(module.register_forward_hook(hook))
        try:
            outputs = backbone(batch)
        finally:
            for handle in handles:
                handle.remove()
        for stage, (grid, logits) in grids.items():
            previous = positions_key(LEVELS[LEVELS.index(stage) - 1])
            found[stage].append((grid, logits, outputs[previous]))
    if remaining or len(details) != sum(b.shape[0] for b in batches):
        raise ValueError(f"labels must hold one map per image, got {len(labels)}")
    detail = label_detail(torch.stack(details), ignore_index=ignore_label)
    return {
        stage: ars_diagnostics(
            torch.cat([g for g, _, _ in parts]),
            torch.cat([a for _, a, _ in parts]),
            detail.to(parts[0][0].device),
            torch.cat([p for _, _, p in parts]),
        ).as_dict()
        for stage, parts in found.items()
    }


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


def count_flops(model: nn.Module, image: torch.Tensor) -> tuple[int, dict[str, int]]:
    """fvcore FLOPs (1 per multiply-add) of inference on ``image``, and the ops fvcore skipped
    (handles: :func:`sfm_d2.flops.sfm_handles`)."""
    with torch.no_grad():
        analysis = flop_count(_SemSegScores(model).eval(), image)
    return int(analysis.total()), dict(analysis.unsupported_ops())


def collect_batches(images: Iterable[torch.Tensor], size: int) -> list[list[torch.Tensor]]:
    """``images`` in lists of at most ``size`` (the last may be shorter)."""
    groups: list[list[torch.Tensor]] = [[]]
    for image in images:
        if len(groups[-1]) == size:
            groups.append([])
        groups[-1].append(image)
    return [group for group in groups if group]
