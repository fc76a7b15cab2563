"""``report.md``: one table comparing the models, the run's context, and the figures.

The table is plain Markdown (``| row | model A | model B |``); :func:`parse_table` reads it back,
so that tests and scripts check the very file a reader sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sfm_core.analysis import LayerAliasing


@dataclass(frozen=True)
class ModelResult:
    """Everything the report says about one trained model."""

    name: str
    config: str
    metrics: dict[str, float]  # the evaluator's sem_seg results, percent
    aliasing: tuple[LayerAliasing, ...]
    parameters: int
    flops: int
    train_seconds: float
    iterations: int
    # {control: per-layer aliasing with every ARS at that control's grid}; empty without ARS
    aliasing_controls: dict[str, tuple[LayerAliasing, ...]] = field(default_factory=dict)


# How the report names each grid control of sfm_core.analysis.controls.
CONTROL_LABELS = {
    "other": "ARS at another image's grid",
    "shift": "ARS at a uniform half-pixel shift",
    "identity": "no resampling",
}


def _number(value: float, digits: int = 2) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _layer_cell(layers: Sequence[LayerAliasing], name: str) -> tuple[str, str]:
    """(mean AR or "-", stride) of layer ``name`` in ``layers``."""
    layer = next((a for a in layers if a.name == name), None)
    if layer is None:
        return "-", ""
    return ("-" if not layer.count else _number(layer.mean, 4)), "x".join(map(str, layer.stride))


def _aliasing_rows(results: Sequence[ModelResult]) -> list[tuple[str, list[str]]]:
    """Per downsampling layer (the union, in the first model's order) the model's own aliasing
    ratio, then its grid controls (models without ARS: "-"); then the mean over layers."""
    order: list[str] = []
    for result in results:
        order += [layer.name for layer in result.aliasing if layer.name not in order]
    controls = [c for c in CONTROL_LABELS if any(c in r.aliasing_controls for r in results)]
    rows = []
    for name in order:
        cells, stride = [], ""
        for result in results:
            cell, found = _layer_cell(result.aliasing, name)
            cells.append(cell)
            stride = found or stride
        rows.append((f"aliasing ratio `{name}` (stride {stride})", cells))
        for control in controls:
            controlled = [
                _layer_cell(r.aliasing_controls.get(control, ()), name)[0] for r in results
            ]
            rows.append((f"aliasing ratio `{name}`, {CONTROL_LABELS[control]}", controlled))
    means = []
    for result in results:
        ran = [layer.mean for layer in result.aliasing if layer.count]
        means.append(_number(sum(ran) / len(ran), 4) if ran else "-")
    rows.append(("aliasing ratio, mean over layers", means))
    return rows


def results_table(results: Sequence[ModelResult], classes: Sequence[str], image_size: str) -> str:
    """The Markdown table: metrics (percent), per-class IoU, aliasing per layer, cost."""
    if not results:
        raise ValueError("results must hold at least one model")
    rows: list[tuple[str, list[str]]] = [
        ("mIoU (%)", [_number(r.metrics["mIoU"]) for r in results]),
        ("boundary IoU (%)", [_number(r.metrics["BoundaryIoU"]) for r in results]),
        ("pixel accuracy (%)", [_number(r.metrics["pACC"]) for r in results]),
        ("mean class accuracy (%)", [_number(r.metrics["mACC"]) for r in results]),
    ]
    for name in classes:
        rows.append((f"IoU `{name}` (%)", [_number(r.metrics[f"IoU-{name}"]) for r in results]))
    rows += _aliasing_rows(results)
    rows += [
        ("parameters (M)", [_number(r.parameters / 1e6, 3) for r in results]),
        (f"GFLOPs (fvcore, 1x3x{image_size})", [_number(r.flops / 1e9, 3) for r in results]),
        ("training time (s)", [_number(r.train_seconds, 1) for r in results]),
        ("training iterations", [str(r.iterations) for r in results]),
    ]
    header = "| | " + " | ".join(r.name for r in results) + " |"
    rule = "|---|" + "---:|" * len(results)
    lines = [header, rule] + [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """``{row label: {model: cell}}`` of the first Markdown table in ``text``."""
    lines = [line.strip() for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        raise ValueError("text holds no Markdown table")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start:end]]
    header, body = cells[0], cells[2:]
    models = header[1:]
    table = {}
    for row in body:
        if len(row) != len(header):
            raise ValueError(f"table row {row!r} has {len(row)} cells, the header {len(header)}")
        table[row[0]] = dict(zip(models, row[1:], strict=True))
    return table


def write_report(
    folder: Path,
    results: Sequence[ModelResult],
    *,
    classes: Sequence[str],
    image_size: str,
    context: Sequence[str],
    figures: Sequence[Path],
) -> Path:
    """Write ``folder/report.md``: context lines, the table, notes, and every figure."""
    lines = ["# SFM demo: plain Mask2Former vs SFM Mask2Former", ""]
    lines += [f"* {line}" for line in context]
    lines += ["", results_table(results, classes, image_size), ""]
    lines += [
        "Metrics on the validation split, in percent; boundary IoU is the IoU of the inner "
        "boundary bands of each class (sfm_d2.evaluation). The aliasing ratio is the share of the "
        "power spectrum beyond the Nyquist line of each downsampling layer's stride, measured on "
        "what enters the layer and averaged over the validation images (SPEC section 5); lower "
        "means less is folded. For models with ARS the same is measured with every ARS resampling at "
        "another image's grid, at a uniform half-pixel shift, and not at all: bilinear resampling "
        "is itself a blur, so only own-grid values below the first two controls show modulation. "
        "FLOPs count one per multiply-add, for inference on one image.",
        "",
        "## Figures",
        "",
    ]
    for path in figures:
        lines += [f"### {path.stem}", "", f"![{path.stem}]({path.name})", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report
