"""The demo: train a baseline and an SFM model with the same budget and seed, evaluate both,
look inside them, and write a report folder (``report.md``, ``results.json``, PNGs)."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from sfm_d2.demo.figures import plot_ars_views, plot_predictions, plot_spectra
from sfm_d2.demo.internals import (
    aliasing_controls,
    ars_diagnostics_over,
    ars_views,
    collect_batches,
    count_flops,
    count_parameters,
    downsampling_inputs,
    model_aliasing,
)
from sfm_d2.demo.models import (
    class_palette,
    dataset_samples,
    load_trained,
    normalized_batch,
    predict_labels,
)
from sfm_d2.demo.report import ModelResult, write_report
from sfm_d2.demo.train import TrainedRun, train

logger = logging.getLogger(__name__)
ANALYSIS_BATCH = 8  # images per forward pass when measuring aliasing


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower())


def machine_description() -> str:
    """CPU model (or GPU), cores, OS and torch version, for the report's context line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def _shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter in the report)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_demo(
    output_dir: str | Path,
    models: Sequence[tuple[str, str | Path]],
    *,
    opts: Sequence[str] = (),
    num_workers: int = 1,
    num_figures: int = 4,
    command: str = "",
) -> Path:
    """Train every ``(name, config)`` of ``models`` (same ``opts``), analyse, write the report.

    Training runs go to ``output_dir/runs/<name>``; the report is ``output_dir/report.md``
    (returned), with ``results.json`` and the PNGs beside it.
    """
    if len(models) < 1 or len({name for name, _ in models}) != len(models):
        raise ValueError(f"models must be (name, config) pairs with distinct names, got {models!r}")
    if num_figures < 1:
        raise ValueError(f"num_figures must be >= 1, got {num_figures!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs: dict[str, TrainedRun] = {}
    for name, config in models:
        logger.info("demo: training %s (%s)", name, config)
        runs[name] = train(config, output_dir / "runs" / _slug(name), opts, num_workers=num_workers)

    results, predictions, spectra_inputs, strides = [], {}, {}, {}
    figures: list[Path] = []
    for name, config in models:
        logger.info("demo: analysing %s", name)
        cfg, model = load_trained(config, runs[name].weights, opts)
        samples = list(dataset_samples(cfg, cfg.DATASETS.TEST[0]))
        batches = [
            normalized_batch(model, [s.image for s in group])
            for group in collect_batches(samples, ANALYSIS_BATCH)
        ]
        aliasing = model_aliasing(model.backbone, batches)
        strides.update({layer.name: layer.stride[0] for layer in aliasing})
        shown = samples[:num_figures]
        predictions[name] = [predict_labels(model, s.image) for s in shown]
        spectra_inputs[name] = downsampling_inputs(model.backbone, batches[0])
        views = ars_views(model.backbone, normalized_batch(model, [shown[0].image]))
        figures += plot_ars_views(
            shown[0].image,
            views,
            output_dir,
            prefix=f"{_slug(name)}_",
            image_format=cfg.INPUT.FORMAT,
        )
        run = runs[name]
        results.append(
            ModelResult(
                name=name,
                config=_shown_path(config),
                metrics=run.metrics,
                aliasing=aliasing,
                parameters=count_parameters(model),
                flops=count_flops(model, samples[0].image)[0],
                train_seconds=run.seconds,
                iterations=run.iterations,
                aliasing_controls=aliasing_controls(model.backbone, batches),
                ars_diagnostics=ars_diagnostics_over(
                    model.backbone,
                    batches,
                    [s.labels for s in samples if s.labels is not None],
                    ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                ),
            )
        )
    classes, colors = class_palette(cfg)
    height, width = samples[0].image.shape[-2:]
    prediction_png = plot_predictions(
        shown,
        predictions,
        classes=classes,
        colors=colors,
        path=output_dir / "predictions.png",
        image_format=cfg.INPUT.FORMAT,
    )
    spectrum_pngs = plot_spectra(spectra_inputs, output_dir, strides)
    figures = [prediction_png, *spectrum_pngs, *figures]
    total = time.perf_counter() - started
    context = [
        f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total {total:.0f} s "
        f"(training, evaluation, analysis)",
        f"machine: {machine_description()}; {num_workers} training process(es)",
        *([f"command: `{command}`"] if command else []),
        *(f"{r.name}: `{r.config}`" for r in results),
        *([f"overrides for both: `{' '.join(opts)}`"] if opts else []),
        f"validation split: `{cfg.DATASETS.TEST[0]}`, {len(samples)} images of {height}x{width}",
    ]
    report = write_report(
        output_dir,
        results,
        classes=classes,
        image_size=f"{height}x{width}",
        context=context,
        figures=figures,
    )
    (output_dir / "results.json").write_text(
        json.dumps([asdict(r) for r in results], indent=1, default=str)
    )
    return report
