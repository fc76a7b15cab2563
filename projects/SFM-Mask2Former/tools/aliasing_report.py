#!/usr/bin/env python3
"""Aliasing ratio at the input of every downsampling layer of a trained model, over a dataset.

    python tools/aliasing_report.py --config-file CONFIG.yaml --weights model_final.pth \
        [--dataset sfm_finedetail_val] [--limit 64]

The ratio (METHOD.md §5) is the share of the power spectrum beyond the Nyquist line of the
layer's stride, averaged over the images; images or ``--input`` files are resized as at test time.
"""

from __future__ import annotations

import argparse
import sys

from _common import input_arguments, load_model, model_arguments, samples

import sfm_d2  # noqa: F401  (first: its compatibility layer must run before detectron2 loads)
from sfm_core.analysis import AliasingReport
from sfm_d2.demo import model_aliasing
from sfm_d2.demo.models import normalized_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    input_arguments(parser)
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    model_arguments(parser)
    args = parser.parse_args(argv)
    cfg, model = load_model(args)
    images = [sample.image for sample in samples(cfg, args)]
    if not images:
        parser.error("no images: give --input files or a non-empty --dataset")
    batches = [
        normalized_batch(model, images[i : i + args.batch])
        for i in range(0, len(images), args.batch)
    ]
    layers = model_aliasing(model.backbone, batches)
    print(AliasingReport(layers, spectrum="power", band="square", reduction="sum").table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
