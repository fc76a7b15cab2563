#!/usr/bin/env python3
"""Baseline vs SFM Mask2Former on the built-in fine-detail dataset: train both, write a report.

    python tools/demo.py                       # -> report/report.md and PNGs (nox -s demo)
    python tools/demo.py --output /tmp/rep SOLVER.MAX_ITER 20   # trailing KEY VALUE: both models

Both models get the same schedule, batch and seed (only MODEL.SFM differs in their configs).
The code is :func:`sfm_d2.demo.run_demo`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import sfm_d2  # noqa: F401  (first: its compatibility layer must run before detectron2 loads)
from sfm_d2.demo import run_demo

DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finedetail" / "demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="report", help="report folder (default: report)")
    parser.add_argument(
        "--baseline-config", default=str(DEMO_CONFIGS / "maskformer2_swin_micro_demo.yaml")
    )
    parser.add_argument(
        "--sfm-config", default=str(DEMO_CONFIGS / "sfm_maskformer2_swin_micro_demo.yaml")
    )
    parser.add_argument("--num-workers", type=int, default=2, help="training processes (CPU: gloo)")
    parser.add_argument(
        "--figures", type=int, default=4, help="validation images in predictions.png"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both models"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s]: %(message)s")
    report = run_demo(
        args.output,
        [("baseline", args.baseline_config), ("SFM", args.sfm_config)],
        opts=args.opts,
        num_workers=args.num_workers,
        num_figures=args.figures,
        command=shlex.join(["python", "tools/demo.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    print(f"report written: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
