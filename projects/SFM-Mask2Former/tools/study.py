#!/usr/bin/env python3
"""The study (``nox -s study``): SFM vs baseline, ablations and a BlurPool-style low-pass, paired.

    python tools/study.py                  # ~45 min on 2 CPU cores -> study/study.md, .json, .png
    python tools/study.py --quick          # a smoke run of the same pipeline (minutes)
    python tools/study.py --base-seeds 0 1 2 --continue-iters 300   # any size

Pretrains a baseline per base seed, continues each with every continuation seed in every arm,
and reports paired differences vs the baseline with hierarchical-bootstrap intervals. Finished
runs are kept: running the same command again resumes. The code is :mod:`sfm_d2.study`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import sfm_d2  # noqa: F401  (first: its compatibility layer must run before detectron2 loads)
from sfm_d2.study import ARMS, Plan, quick_plan, run_study

DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finedetail" / "demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="study", help="report folder (default: study)")
    parser.add_argument("--quick", action="store_true", help="smoke-run sizes (12 short runs)")
    parser.add_argument("--base-seeds", type=int, nargs="+")
    parser.add_argument("--continuation-seeds", type=int, nargs="+")
    parser.add_argument("--pretrain-iters", type=int)
    parser.add_argument("--continue-iters", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--parallel", type=int, help="runs at a time, one core each")
    parser.add_argument("--replicates", type=int, help="bootstrap replicates")
    parser.add_argument("--arms", nargs="+", help=f"arm keys, from {[a.key for a in ARMS]}")
    parser.add_argument("--train-dataset")
    parser.add_argument("--test-dataset")
    parser.add_argument(
        "--baseline-config", default=str(DEMO_CONFIGS / "maskformer2_swin_micro_demo.yaml")
    )
    parser.add_argument(
        "--sfm-config", default=str(DEMO_CONFIGS / "sfm_maskformer2_swin_micro_demo.yaml")
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, every run")
    args = parser.parse_args(argv)
    plan = quick_plan() if args.quick else Plan()
    changes: dict[str, object] = {}
    for name in (
        "pretrain_iters",
        "continue_iters",
        "batch_size",
        "parallel",
        "replicates",
        "train_dataset",
        "test_dataset",
    ):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    for name in ("base_seeds", "continuation_seeds"):
        if getattr(args, name) is not None:
            changes[name] = tuple(getattr(args, name))
    if args.arms is not None:
        known = {arm.key: arm for arm in ARMS}
        unknown = [key for key in args.arms if key not in known]
        if unknown:
            parser.error(f"--arms: unknown {unknown}; choose from {list(known)}")
        changes["arms"] = tuple(known[key] for key in ["B", *[k for k in args.arms if k != "B"]])
    if args.opts:
        changes["extra_opts"] = tuple(args.opts)
    plan = replace(plan, **changes)  # type: ignore[arg-type]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s]: %(message)s")
    command = shlex.join(["python", "tools/study.py", *(sys.argv[1:] if argv is None else argv)])
    report = run_study(
        args.output,
        plan,
        baseline_config=args.baseline_config,
        sfm_config=args.sfm_config,
        command=command,
    )
    print(f"report written: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
