#!/usr/bin/env python3
"""Soak test: train the SFM quick model for many iterations on CPU; resident memory must stay flat.

A leak of a few KiB per step (a tensor kept in a list, a growing cache, a hook that never lets
go) is invisible in a 4-iteration test and kills a 160k-iteration run. This trains
``SFMTrainer`` on the SFM quick schedule (ARS + every Mask2Former switch, 64 px fine-detail
images, batch 2, a checkpoint every 250 iterations, detectron2's writers every 20), samples the
process's resident set size (RSS, /proc/self/statm) every ``--every`` iterations, and fits a
line to the samples after ``--warmup``. It exits 1 when the slope exceeds ``--max-slope-mib``
MiB per 100 iterations, and writes the samples and the fit to OUTPUT_DIR/soak.json.

    python tools/soak_training.py --iterations 1000 --output-dir /tmp/soak
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sfm_d2  # noqa: F401  (before detectron2: its compat layer must run first)
from sfm_d2.config import load_config
from sfm_d2.engine import SFMTrainer, register_datasets

# isort: split
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

ROOT = Path(__file__).resolve().parents[1]
CONFIG = (
    ROOT
    / "projects/SFM-Mask2Former/configs/quick_schedules"
    / "sfm_maskformer2_swin_micro_finedetail_instant_test.yaml"
)
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """This process's resident set size now (not the peak), in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class RecordRSS(HookBase):  # type: ignore[misc]
    """Samples RSS after every ``every``-th iteration (after the step's writers and checkpoints)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.samples: list[tuple[int, float]] = []

    def after_step(self) -> None:
        iteration = self.trainer.iter + 1
        if iteration % self.every == 0:
            self.samples.append((iteration, rss_mib()))
            print(f"iteration {iteration}: RSS {self.samples[-1][1]:.1f} MiB", flush=True)


def slope_per_100(samples: list[tuple[int, float]], warmup: int) -> float:
    """Least-squares slope of RSS over iterations after ``warmup``, in MiB per 100 iterations."""
    steady = [(i, m) for i, m in samples if i > warmup]
    if len(steady) < 3:
        raise ValueError(f"need at least 3 samples after warm-up {warmup}, got {len(steady)}")
    x, y = np.array(steady, dtype=np.float64).T
    return float(np.polyfit(x, y, 1)[0] * 100)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200, help="iterations before the fit")
    parser.add_argument("--every", type=int, default=10, help="iterations between RSS samples")
    parser.add_argument("--max-slope-mib", type=float, default=1.0, help="per 100 iterations")
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.iterations:
        parser.error("--warmup must be in [0, --iterations)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One thread unless told otherwise: spinning OpenMP threads on a shared machine made steps
    # many times slower (torch read OMP_NUM_THREADS at import, so set it directly).
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    overrides = [
        "SOLVER.MAX_ITER", str(args.iterations),
        "SOLVER.CHECKPOINT_PERIOD", "250",
        "DATASETS.TEST", "()",  # no evaluation: the soak measures training
        "OUTPUT_DIR", str(args.output_dir),
    ]  # fmt: skip
    cfg = load_config(str(CONFIG), overrides)
    cfg.freeze()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    seed_all_rng(cfg.SEED)
    register_datasets(cfg)
    trainer = SFMTrainer(cfg)
    recorder = RecordRSS(args.every)
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    slope = slope_per_100(recorder.samples, args.warmup)
    report = {
        "iterations": args.iterations,
        "warmup": args.warmup,
        "seconds": round(seconds, 1),
        "torch_threads": threads,
        "rss_mib_after_warmup": next(m for i, m in recorder.samples if i > args.warmup),
        "rss_mib_final": recorder.samples[-1][1],
        "slope_mib_per_100_iterations": slope,
        "max_slope_mib_per_100_iterations": args.max_slope_mib,
        "samples": recorder.samples,
    }
    (args.output_dir / "soak.json").write_text(json.dumps(report, indent=1))
    print(
        f"{args.iterations} iterations in {seconds:.0f} s; RSS {report['rss_mib_after_warmup']:.1f}"
        f" MiB after warm-up, {report['rss_mib_final']:.1f} MiB at the end; slope "
        f"{slope:+.3f} MiB / 100 iterations (limit {args.max_slope_mib})"
    )
    return 0 if slope <= args.max_slope_mib else 1


if __name__ == "__main__":
    sys.exit(main())
