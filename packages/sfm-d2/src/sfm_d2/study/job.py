"""One training run of the study, in its own process: ``python -m sfm_d2.study.job SPEC.json``.

The spec names a config, its overrides and an output folder. The run trains (as train_net, on one
process), then, if asked, measures what the study needs on every validation image and writes
``study_scores.npy`` (per-image statistics, :mod:`sfm_d2.study.scores`) and ``study_run.json``
(the evaluator's metrics, timing, aliasing under every grid control, ARS diagnostics). ``study_run.json`` is
written last: its presence marks a finished run, so an interrupted study resumes where it was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfm_d2.study.spec import RESULT, SCORES, JobSpec

ANALYSIS_BATCH = 8


def _aliasing(backbone: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, Any]:
    from sfm_d2.demo.internals import aliasing_controls, model_aliasing

    found = {"own": model_aliasing(backbone, batches), **aliasing_controls(backbone, batches)}
    return {
        control: {layer.name: layer.mean for layer in layers} for control, layers in found.items()
    }


def analyse(spec: JobSpec, weights: Path) -> dict[str, Any]:
    """Per-image statistics (saved beside the weights) and the run's aliasing."""
    from sfm_d2.demo.internals import ars_diagnostics_over, collect_batches
    from sfm_d2.demo.models import dataset_samples, load_trained, normalized_batch, predict_labels
    from sfm_d2.study.scores import image_statistics

    cfg, model = load_trained(spec.config, weights, spec.opts)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    samples = list(dataset_samples(cfg, cfg.DATASETS.TEST[0]))
    stats = []
    for sample in samples:
        if sample.labels is None:
            raise ValueError(f"test image {sample.name} has no labels")
        stats.append(
            image_statistics(
                predict_labels(model, sample.image), sample.labels, num_classes, ignore
            )
        )
    np.save(Path(spec.output_dir) / SCORES, np.stack(stats))
    batches = [
        normalized_batch(model, [s.image for s in group])
        for group in collect_batches(samples, ANALYSIS_BATCH)
    ]
    labels = [s.labels for s in samples if s.labels is not None]
    return {
        "images": len(samples),
        "aliasing": _aliasing(model.backbone, batches),
        "ars_diagnostics": ars_diagnostics_over(
            model.backbone, batches, labels, ignore_label=ignore
        ),
    }


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Train, analyse if asked, write ``study_run.json``; return its content."""
    from sfm_d2.demo.train import train

    torch.set_num_threads(1)  # the study runs jobs side by side, one core each
    run = train(spec.config, spec.output_dir, spec.opts, num_workers=1)
    result: dict[str, Any] = {
        "name": spec.name,
        "metrics": run.metrics,
        "seconds": run.seconds,
        "iterations": run.iterations,
    }
    if spec.analyse:
        result.update(analyse(spec, run.weights))
    (Path(spec.output_dir) / RESULT).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sfm_d2.study.job SPEC.json", file=sys.stderr)
        return 2
    run_job(JobSpec.read(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
