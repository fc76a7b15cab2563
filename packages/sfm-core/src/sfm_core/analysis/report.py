"""Model-level aliasing report: the aliasing ratio at the input of every downsampling layer.

Forward pre-hooks capture what enters each chosen layer, the ratio is taken with that layer's own
stride, and each layer's ratios are averaged over every image of every batch (METHOD.md §5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sfm_core.analysis.aliasing import (
    BANDS,
    REDUCTIONS,
    SPECTRA,
    aliasing_ratio,
    check_choice,
    check_stride,
)
from sfm_core.analysis.controls import check_control, grid_control
from sfm_core.insertion import LAYOUTS, is_downsampling

Predicate = Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class LayerAliasing:
    """One hooked layer: its mean aliasing ratio over ``count`` images (NaN when it never ran)."""

    name: str
    kind: str
    stride: tuple[int, int]
    mean: float
    count: int


@dataclass(frozen=True)
class AliasingReport:
    """Per-layer mean aliasing ratios, in the model's module order; ``str()`` gives a table."""

    layers: tuple[LayerAliasing, ...]
    spectrum: str
    band: str
    reduction: str
    control: str = "own"

    @property
    def overall(self) -> float:
        """Mean over the layers that ran of their mean ratio (NaN if none ran)."""
        means = [layer.mean for layer in self.layers if layer.count]
        return sum(means) / len(means) if means else math.nan

    def table(self) -> str:
        """A fixed-width text table: layer, type, stride, mean AR, images."""
        header = ("layer", "type", "stride", "mean AR", "images")
        rows = [
            (
                layer.name,
                layer.kind,
                "x".join(map(str, layer.stride)),
                f"{layer.mean:.4f}" if layer.count else "-",
                str(layer.count),
            )
            for layer in self.layers
        ]
        rows.append(("overall", "", "", f"{self.overall:.4f}", ""))
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            f"aliasing ratio ({self.spectrum}, {self.band} band, reduction={self.reduction}, "
            f"ARS grids: {self.control})",
            "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        return self.table()


def layer_stride(name: str, module: nn.Module) -> tuple[int, int]:
    """``(sy, sx)`` of a conv, pooling or pixel-unshuffle layer; others must be given a stride."""
    if isinstance(module, nn.PixelUnshuffle):
        return check_stride(module.downscale_factor)
    stride = getattr(module, "stride", None)
    if stride is None:
        stride = getattr(module, "kernel_size", None)  # pooling's default stride
    if stride is None:
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) has no stride attribute; pass stride="
        )
    return check_stride(stride)


class _Accumulator:
    """Running sum and count of one layer's per-image ratios (float64, on the CPU)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, ratios: torch.Tensor) -> None:
        self.total += float(ratios.sum())
        self.count += ratios.numel()


def _run(model: nn.Module, batch: object) -> None:
    """Call ``model`` on one batch: a tuple is unpacked, a mapping passed as keywords."""
    if isinstance(batch, tuple):
        model(*batch)
    elif isinstance(batch, Mapping):
        model(**batch)
    else:
        model(batch)


def _chosen_layers(
    model: nn.Module, predicate: Predicate | None, names: Sequence[str] | None
) -> dict[str, nn.Module]:
    if names is not None and predicate is not None:
        raise ValueError("give either names or predicate, not both")
    if names is not None:
        if isinstance(names, str):
            raise TypeError(f"names must be a sequence of module names, got the string {names!r}")
        modules = dict(model.named_modules())
        unknown = [name for name in names if name not in modules or not name]
        if unknown:
            raise ValueError(f"names has {unknown!r}, which are not submodules of the model")
        return {name: modules[name] for name in names}
    choose = predicate or (lambda _name, module: is_downsampling(module))
    chosen = {name: module for name, module in model.named_modules() if choose(name, module)}
    if not chosen:
        raise ValueError(
            "no downsampling layer found (default: Conv2d/pooling with stride > 1, "
            "PixelUnshuffle); pass predicate= or names="
        )
    return chosen


def aliasing_report(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    predicate: Predicate | None = None,
    names: Sequence[str] | None = None,
    stride: int | tuple[int, int] | None = None,
    layout: str = "nchw",
    spectrum: str = "power",
    band: str = "square",
    reduction: str = "sum",
    control: str = "own",
    shift: float = 0.5,
) -> AliasingReport:
    """Mean aliasing ratio at the input of each downsampling layer of ``model`` over ``batches``.

    Runs every batch through ``model`` in eval mode under ``torch.no_grad()`` (each module's own
    mode is restored afterwards), with forward pre-hooks that are removed even on error.

    Args:
        model: any module; each chosen layer must get its feature map as first argument.
        batches: the data; a tensor (or any object) is passed as ``model(batch)``, a tuple as
            ``model(*batch)``, a mapping as ``model(**batch)``.
        predicate: ``(name, module) -> bool`` choosing the layers; default
            :func:`sfm_core.insertion.is_downsampling` (Conv2d/pooling with stride > 1,
            PixelUnshuffle).
        names: the exact layers to hook instead of a predicate.
        stride: one stride for every chosen layer; default each layer's own (``stride``,
            pooling's ``kernel_size``, PixelUnshuffle's factor).
        layout: ``"nchw"`` or ``"nhwc"`` (channels-last inputs, e.g. some Swin layers).
        spectrum, band, reduction: options of :func:`aliasing_ratio`.
        control: which grid every ARS module of the model resamples at (see
            :mod:`sfm_core.analysis.controls`): ``"own"`` (the model as it is), ``"other"``
            (another image's grid), ``"shift"`` (a uniform ``shift``-pixel shift) or
            ``"identity"`` (no resampling).
        shift: pixels of the ``"shift"`` control.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    check_choice("spectrum", spectrum, SPECTRA)
    check_choice("band", band, BANDS)
    check_choice("reduction", reduction, REDUCTIONS)
    check_control(control)
    chosen = _chosen_layers(model, predicate, names)
    fixed = None if stride is None else check_stride(stride)
    strides = {name: fixed or layer_stride(name, module) for name, module in chosen.items()}
    sums = {name: _Accumulator() for name in chosen}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise TypeError(f"layer {name!r} must get its feature map as first argument")
            features = args[0]
            if layout == "nhwc":
                features = features.movedim(-1, -3)
            try:
                ratios = aliasing_ratio(
                    features, strides[name], spectrum=spectrum, band=band, reduction=reduction
                )
            except (TypeError, ValueError) as error:  # say which layer got the bad map
                raise type(error)(f"input of layer {name!r}: {error}") from error
            sums[name].add(ratios)

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in chosen.items()]
    try:
        model.eval()
        with torch.no_grad(), grid_control(model, control, shift):
            for batch in batches:
                _run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    layers = tuple(
        LayerAliasing(
            name=name,
            kind=type(module).__name__,
            stride=strides[name],
            mean=sums[name].total / sums[name].count if sums[name].count else math.nan,
            count=sums[name].count,
        )
        for name, module in chosen.items()
    )
    return AliasingReport(layers, spectrum, band, reduction, control)
