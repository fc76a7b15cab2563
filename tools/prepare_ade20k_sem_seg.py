#!/usr/bin/env python
"""Write ADE20K's labels in the form detectron2's ``ade20k_sem_seg_*`` datasets read.

    python tools/prepare_ade20k_sem_seg.py [--root DIR]

``DIR`` (default ``$DETECTRON2_DATASETS``, else ``datasets``) holds ``ADEChallengeData2016`` as
released; this writes ``ADEChallengeData2016/annotations_detectron2/{training,validation}`` with
ids shifted so 0 (unlabelled) -> 255 (ignored) and k -> k-1. See :func:`sfm_d2.data.prepare_ade20k`.
"""

from __future__ import annotations

import argparse
import sys

import sfm_d2  # noqa: F401  (first: it makes detectron2 0.6 importable on current numpy/Pillow)
from sfm_d2.data import BadDataError, prepare_ade20k


def _report(split: str, done: int, total: int) -> None:
    if done == total or done % 1000 == 0:
        print(f"  {split}: {done}/{total}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Shift ADE20K labels for detectron2 (0 -> 255).")
    parser.add_argument(
        "--root", help="folder holding ADEChallengeData2016 (default: env/datasets)"
    )
    args = parser.parse_args(argv)
    try:
        counts = prepare_ade20k(args.root, progress=_report)
    except BadDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(f"{n} {split} labels" for split, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
