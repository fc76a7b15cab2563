"""Train one config with :class:`~sfm_d2.engine.SFMTrainer` and time the training alone.

The run is train_net's (same setup, seeds, hooks, logs with ETA, final evaluation into
``OUTPUT_DIR/inference/<dataset>/sem_seg_evaluation.json``) plus one hook that writes how long
the iterations took (from the first step to the last checkpoint, evaluation excluded).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectron2.engine import HookBase
from detectron2.utils import comm

from sfm_d2.engine import SFMTrainer, default_argument_parser, register_datasets, setup
from sfm_d2.engine.cli import launch_device, load_cfg
from sfm_d2.launch import launch

TIMING_FILE = "training_time.json"


class TrainingClock(HookBase):  # type: ignore[misc]
    """Writes ``{"seconds", "iterations"}`` once the last iteration (and its checkpoint) is done.

    Registered after detectron2's hooks, so the time covers their per-step work (logging,
    checkpoints) but not the evaluation that runs after training.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = 0.0
        self.first_iter = 0

    def before_train(self) -> None:
        self.start = time.perf_counter()
        self.first_iter = self.trainer.iter

    def after_step(self) -> None:
        if self.trainer.iter + 1 == self.trainer.max_iter and comm.is_main_process():
            record = {
                "seconds": time.perf_counter() - self.start,
                "iterations": self.trainer.max_iter - self.first_iter,
            }
            self.path.write_text(json.dumps(record))


def _train_worker(args: argparse.Namespace) -> None:
    cfg = setup(args)
    register_datasets(cfg)
    trainer = SFMTrainer(cfg)
    trainer.register_hooks([TrainingClock(Path(cfg.OUTPUT_DIR) / TIMING_FILE)])
    trainer.resume_or_load(resume=False)
    trainer.train()


@dataclass(frozen=True)
class TrainedRun:
    """A finished training: its folder, final weights, evaluation and timing."""

    output_dir: Path
    weights: Path
    metrics: dict[str, float]  # the evaluator's "sem_seg" results (percent)
    seconds: float
    iterations: int


def read_run(output_dir: Path, test_dataset: str) -> TrainedRun:
    """The :class:`TrainedRun` a finished :func:`train` left in ``output_dir``."""
    evaluation = output_dir / "inference" / test_dataset / "sem_seg_evaluation.json"
    for path in (output_dir / "model_final.pth", evaluation, output_dir / TIMING_FILE):
        if not path.is_file():
            raise ValueError(f"output_dir {output_dir} has no {path.name}: the run did not finish")
    timing: dict[str, Any] = json.loads((output_dir / TIMING_FILE).read_text())
    metrics: dict[str, float] = json.loads(evaluation.read_text())["sem_seg"]
    return TrainedRun(
        output_dir,
        output_dir / "model_final.pth",
        metrics,
        float(timing["seconds"]),
        int(timing["iterations"]),
    )


def train(
    config_file: str | Path,
    output_dir: str | Path,
    opts: Sequence[str] = (),
    *,
    num_workers: int = 1,
) -> TrainedRun:
    """Train ``config_file`` (+ ``opts``) from scratch into ``output_dir``, evaluate, time it.

    ``num_workers`` processes share each batch (gloo on CPU, NCCL on GPUs), as train_net's
    ``--num-gpus``.
    """
    output_dir = Path(output_dir)
    argv = ["--config-file", str(config_file), *opts, "OUTPUT_DIR", str(output_dir)]
    args = default_argument_parser().parse_args(argv)
    args.num_gpus = num_workers
    cfg = load_cfg(args)
    if len(cfg.DATASETS.TEST) != 1:
        raise ValueError(f"config_file must name one test dataset, got {list(cfg.DATASETS.TEST)}")
    launch(_train_worker, num_workers, args=(args,), device=launch_device(cfg))
    return read_run(output_dir, cfg.DATASETS.TEST[0])
