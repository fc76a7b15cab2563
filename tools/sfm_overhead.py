#!/usr/bin/env python
"""Parameter and FLOP overhead of ARS per SFM backbone (fvcore, batch 1, CPU), as a Markdown table.

    python tools/sfm_overhead.py                      # the nine backbones of the README table
    python tools/sfm_overhead.py --size 512 512 CONFIG.yaml ...

Each backbone is built twice from its yaml, with ``MODEL.SFM.ARS_STAGES`` as configured and with
``[]`` (the plain backbone), and counted with :func:`sfm_d2.flops.flop_count`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import sfm_d2  # first: it makes detectron2 0.6 importable on current numpy/Pillow
from sfm_d2.flops import backbone_overhead, overhead_table

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "packages" / "sfm-d2" / "tests" / "configs" / "backbones"
DEFAULT = {
    "R18": "sfm_R18.yaml",
    "R50": "sfm_R50.yaml",
    "R101": "sfm_R101.yaml",
    "Swin-T": "sfm_swin_tiny.yaml",
    "Swin-S": "sfm_swin_small.yaml",
    "Swin-B": "sfm_swin_base.yaml",
    "ConvNeXt-T": "sfm_convnext_tiny.yaml",
    "ConvNeXt-S": "sfm_convnext_small.yaml",
    "ConvNeXt-B": "sfm_convnext_base.yaml",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ARS parameter/FLOP overhead per backbone.")
    parser.add_argument("configs", nargs="*", help="backbone yamls (default: the README's nine)")
    parser.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    args = parser.parse_args(argv)
    from detectron2.config import get_cfg

    named = {Path(c).stem: Path(c) for c in args.configs} or {
        name: CONFIGS / file for name, file in DEFAULT.items()
    }
    rows = []
    for name, path in named.items():
        cfg = sfm_d2.add_sfm_config(get_cfg())
        cfg.merge_from_file(str(path))
        start = time.perf_counter()
        rows.append(backbone_overhead(name, cfg, size=(args.size[0], args.size[1])))
        print(f"{name}: counted in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(
        f"input 1×3×{args.size[0]}×{args.size[1]}; fvcore counts 1 per multiply-add; "
        f"torch {torch.__version__}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}"
    )
    print(overhead_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
