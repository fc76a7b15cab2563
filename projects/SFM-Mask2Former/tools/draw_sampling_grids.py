#!/usr/bin/env python3
"""Where a trained SFM model's ARS modules sample each image: grids and saliency maps as PNGs.

    python tools/draw_sampling_grids.py --config-file CONFIG.yaml --weights model_final.pth \
        --input a.png --output grids/            # or --dataset NAME --limit 4

Writes ``<output>/<image>_sampling_grid_<stage>.png`` and ``<image>_saliency_<stage>.png`` per ARS
(the grid in image coordinates: every earlier ARS composed in, METHOD.md §2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import input_arguments, load_model, model_arguments, samples

import sfm_d2  # noqa: F401  (first: its compatibility layer must run before detectron2 loads)
from sfm_d2.demo import ars_views
from sfm_d2.demo.figures import plot_ars_views
from sfm_d2.demo.models import normalized_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    input_arguments(parser)
    parser.add_argument("--output", default="sampling_grids", help="folder for the PNGs")
    model_arguments(parser)
    args = parser.parse_args(argv)
    cfg, model = load_model(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for sample in samples(cfg, args):
        views = ars_views(model.backbone, normalized_batch(model, [sample.image]))
        if not views:
            parser.error("the model has no ARS (MODEL.SFM.ARS_STAGES is empty): nothing to draw")
        written = plot_ars_views(
            sample.image, views, output, prefix=f"{sample.name}_", image_format=cfg.INPUT.FORMAT
        )
        print(*written, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
