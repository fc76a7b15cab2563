"""The study's report: paired differences with intervals, a forest plot, aliasing with controls.

``study.md`` (its first table can be pasted into the README), ``study.json`` (every number) and
``study_forest.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sfm_d2.data.finedetail import CLASSES
from sfm_d2.demo.run import machine_description
from sfm_d2.study.bootstrap import Interval, hierarchical_bootstrap
from sfm_d2.study.plan import BASELINE, Plan
from sfm_d2.study.run import RunResult, stacked_scores
from sfm_d2.study.scores import THIN_CLASSES, metric_functions

CONTROL_NAMES = {
    "own": "own grid",
    "other": "another image's grid",
    "shift": "half-pixel shift",
    "identity": "no resampling",
}


def _cell(value: float, digits: int = 2) -> str:
    return "nan" if math.isnan(value) else f"{value:+.{digits}f}"


def differences(plan: Plan, results: Sequence[RunResult]) -> dict[str, dict[str, Interval]]:
    """``{arm: {metric: Interval}}`` of arm minus baseline, for every arm but the baseline."""
    metrics = metric_functions(CLASSES)
    base = stacked_scores(plan, results, BASELINE.key)
    found: dict[str, dict[str, Interval]] = {}
    for arm in plan.arms[1:]:
        scores = stacked_scores(plan, results, arm.key)
        found[arm.key] = {
            name: hierarchical_bootstrap(
                scores, base, metric, replicates=plan.replicates, seed=index
            )
            for index, (name, metric) in enumerate(metrics.items())
        }
    return found


def absolute_scores(plan: Plan, results: Sequence[RunResult]) -> dict[str, dict[str, list[float]]]:
    """``{arm: {metric: [value per run]}}`` (runs in plan order, base seed major)."""
    metrics = metric_functions(CLASSES)
    table: dict[str, dict[str, list[float]]] = {}
    for arm in plan.arms:
        summed = stacked_scores(plan, results, arm.key).sum(axis=2)
        table[arm.key] = {
            name: [float(v) for v in metric(summed).ravel()] for name, metric in metrics.items()
        }
    return table


def aliasing_means(
    plan: Plan, results: Sequence[RunResult]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{arm: {layer: {control: mean AR over runs}}}``."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for arm in plan.arms:
        records = [r.record["aliasing"] for r in results if r.arm == arm.key]
        layers = list(records[0]["own"])
        table[arm.key] = {
            layer: {
                control: float(np.mean([record[control][layer] for record in records]))
                for control in records[0]
            }
            for layer in layers
        }
    return table


DIAGNOSTICS = {
    "displacement_mean": "mean displacement (px)",
    "displacement_max": "max displacement (px)",
    "displacement_detail": "displacement over detail (px)",
    "magnification_detail": "magnification over detail",
    "magnification_background": "magnification over background",
    "saliency_contrast": "saliency contrast",
}


def diagnostics_means(
    plan: Plan, results: Sequence[RunResult]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{arm: {stage: {diagnostic: mean over runs}}}`` for the arms with ARS."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for arm in plan.arms:
        records = [r.record.get("ars_diagnostics") or {} for r in results if r.arm == arm.key]
        if not records or not records[0]:
            continue
        table[arm.key] = {
            stage: {
                key: float(np.mean([record[stage][key] for record in records])) for key in values
            }
            for stage, values in records[0].items()
        }
    return table


def diagnostics_table(plan: Plan, means: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown: per arm with ARS and stage, every ARS diagnostic (mean over runs)."""
    if not means:
        return "(no arm has ARS)"
    lines = [
        "| arm | ARS before | " + " | ".join(DIAGNOSTICS.values()) + " |",
        "|---|---|" + "---:|" * len(DIAGNOSTICS),
    ]
    for arm in plan.arms:
        for stage, values in means.get(arm.key, {}).items():
            cells = [f"{values.get(key, math.nan):.3f}" for key in DIAGNOSTICS]
            lines.append(f"| {arm.label} | {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(plan: Plan, found: Mapping[str, Mapping[str, Interval]]) -> str:
    """Markdown: one row per arm, one column per metric, ``+d [low, high]`` in points."""
    names = list(next(iter(found.values())))
    lines = [
        "| arm minus baseline (points) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for arm in plan.arms[1:]:
        cells = [
            f"{_cell(i.estimate)} [{_cell(i.low)}, {_cell(i.high)}]"
            + (" *" if i.excludes_zero else "")
            for i in found[arm.key].values()
        ]
        lines.append(f"| {arm.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def absolute_table(plan: Plan, scores: Mapping[str, Mapping[str, list[float]]]) -> str:
    names = list(next(iter(scores.values())))
    lines = [
        "| arm | " + " | ".join(f"{n} (%)" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for arm in plan.arms:
        cells = []
        for name in names:
            values = np.array(scores[arm.key][name])
            spread = f" ± {values.std(ddof=1):.2f}" if values.size > 1 else ""
            cells.append(f"{values.mean():.2f}{spread}")
        lines.append(f"| {arm.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def aliasing_table(plan: Plan, means: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown: per arm and downsampling layer, the aliasing ratio under each grid control."""
    controls = list(CONTROL_NAMES)
    lines = [
        "| arm | layer | " + " | ".join(CONTROL_NAMES.values()) + " |",
        "|---|---|" + "---:|" * len(controls),
    ]
    for arm in plan.arms:
        for layer, values in means[arm.key].items():
            cells = [f"{values[c]:.4f}" if c in values else "-" for c in controls]
            lines.append(f"| {arm.label} | `{layer}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_forest(plan: Plan, found: Mapping[str, Mapping[str, Interval]], path: Path) -> Path:
    """One panel per metric: each arm's paired difference vs the baseline with its interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(next(iter(found.values())))
    arms = plan.arms[1:]
    figure = Figure(figsize=(3.6 * len(names), 0.5 * len(arms) + 1.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(names), sharey=True, squeeze=False)[0]
    rows = np.arange(len(arms))[::-1]
    for axis, name in zip(axes, names, strict=True):
        for row, arm in zip(rows, arms, strict=True):
            interval = found[arm.key][name]
            color = "tab:blue" if interval.excludes_zero else "tab:gray"
            axis.plot([interval.low, interval.high], [row, row], color=color, linewidth=2)
            axis.plot([interval.estimate], [row], "o", color=color)
        axis.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
        axis.set_title(f"{name}: arm - baseline", fontsize="medium")
        axis.set_xlabel("points (95 % interval)")
    axes[0].set_yticks(rows, [arm.label for arm in arms])
    figure.suptitle(
        f"paired differences, hierarchical bootstrap ({len(plan.base_seeds)} base x "
        f"{len(plan.continuation_seeds)} continuation seeds x images)",
        fontsize="medium",
    )
    figure.savefig(path, dpi=120)
    return path


def write_study_report(
    output_dir: Path,
    plan: Plan,
    results: Sequence[RunResult],
    *,
    seconds: float,
    command: str,
    configs: Mapping[str, Path],
) -> Path:
    """Write ``study.md``, ``study.json`` and ``study_forest.png``; return the Markdown's path."""
    found = differences(plan, results)
    scores = absolute_scores(plan, results)
    means = aliasing_means(plan, results)
    diagnostics = diagnostics_means(plan, results)
    forest = plot_forest(plan, found, output_dir / "study_forest.png")
    images = results[0].scores.shape[0]
    context = [
        f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total {seconds:.0f} s",
        f"machine: {machine_description()}; {plan.parallel} runs at a time, one core each",
        *([f"command: `{command}`"] if command else []),
        f"data: `{plan.train_dataset}` → `{plan.test_dataset}` ({images} validation images)",
        f"baseline config: `{configs['baseline']}`; SFM config: `{configs['sfm']}`",
        f"{len(plan.base_seeds)} base seeds {list(plan.base_seeds)}, each a baseline pretrained "
        f"for {plan.pretrain_iters} iterations (batch {plan.batch_size}); each continued for "
        f"{plan.continue_iters} iterations with continuation seeds "
        f"{list(plan.continuation_seeds)} in every arm",
    ]
    lines = ["# SFM study: paired arms from shared baseline checkpoints", ""]
    lines += [f"* {line}" for line in context]
    lines += [
        "",
        "## Paired differences vs the baseline",
        "",
        differences_table(plan, found),
        "",
        f"Mean over runs of (arm − baseline) in IoU points, with the {plan.replicates}-replicate "
        "hierarchical bootstrap 95 % interval (base seeds, then continuation seeds, then images, "
        "resampled with replacement; arm and baseline always share the picks). `*`: the interval "
        f"excludes zero. Boundary IoU: mean over classes of the IoU of the {3}-px inner boundary "
        f"bands; thin-class IoU: mean IoU of {', '.join(THIN_CLASSES)}; mIoU over all classes.",
        "",
        f"![forest plot]({forest.name})",
        "",
        "## Scores per arm",
        "",
        absolute_table(plan, scores),
        "",
        "Mean ± standard deviation over the runs (base × continuation seeds) of each arm.",
        "",
        "## ARS diagnostics",
        "",
        diagnostics_table(plan, diagnostics),
        "",
        "Over all validation images, mean over runs (sfm_core.nn.ars_diagnostics): how far ARS "
        "moves its samples (pixels of its input map), how many samples per unit area it puts "
        "on ground-truth detail and on the background relative to a uniform lattice (1 = no "
        "zoom), and its saliency on detail over its saliency elsewhere.",
        "",
        "## Aliasing ratio with grid controls",
        "",
        aliasing_table(plan, means),
        "",
        "Mean over runs of the aliasing ratio entering each downsampling layer (METHOD.md §5), "
        "with every ARS resampling at its own grid, at another image's grid, at a uniform "
        "half-pixel shift, or not at all. Bilinear resampling off the pixel centres is a blur, so "
        "only an own-grid ratio below the first two controls is modulation.",
        "",
    ]
    report = output_dir / "study.md"
    report.write_text("\n".join(lines))
    (output_dir / "study.json").write_text(
        json.dumps(
            {
                "plan": {k: v for k, v in asdict(plan).items() if k != "arms"},
                "arms": [asdict(arm) for arm in plan.arms],
                "seconds": seconds,
                "differences": {
                    arm: {name: asdict(i) for name, i in metrics.items()}
                    for arm, metrics in found.items()
                },
                "scores": scores,
                "aliasing": means,
                "ars_diagnostics": diagnostics,
                "runs": [
                    {
                        "arm": r.arm,
                        "base_seed": r.base_seed,
                        "continuation_seed": r.continuation_seed,
                        **r.record,
                    }
                    for r in results
                ],
            },
            indent=1,
            default=str,
        )
    )
    return report
