#!/usr/bin/env python3
"""Parameters and fvcore FLOPs of a model (inference on one image), trained or freshly built.

    python tools/analyze_model.py --config-file CONFIG.yaml [--weights W] [--size 128 128]

FLOPs count one per multiply-add with sfm_d2's handles for the SFM ops (sfm_d2.flops); the ops
fvcore has no handle for are listed (counted 0).
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import load_model, model_arguments

import sfm_d2  # noqa: F401  (first: its compatibility layer must run before detectron2 loads)
from sfm_d2.demo import count_flops, count_parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="input size (default: INPUT.MIN_SIZE_TEST square)",
    )
    model_arguments(parser, weights_required=False)
    args = parser.parse_args(argv)
    cfg, model = load_model(args, require_weights=False)
    height, width = args.size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    flops, skipped = count_flops(model, image)
    print(f"parameters: {count_parameters(model) / 1e6:.3f} M")
    print(f"GFLOPs (1x3x{height}x{width}): {flops / 1e9:.3f}")
    print(
        "not counted (no fvcore handle):",
        ", ".join(f"{op} x{n}" for op, n in sorted(skipped.items())),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
