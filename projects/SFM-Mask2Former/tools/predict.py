#!/usr/bin/env python3
"""Semantic segmentation of image files with a trained model, drawn by detectron2's Visualizer.

    python tools/predict.py --config-file CONFIG.yaml --weights model_final.pth \
        --input a.png b.jpg --output predictions/

Writes ``<output>/<image name>.png`` (the image with the predicted classes overlaid).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import input_arguments, model_arguments, samples
from detectron2.data import MetadataCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

import sfm_d2  # noqa: F401  (first: its compatibility layer must run before detectron2 loads)
from sfm_d2.demo import load_trained, predict_labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    input_arguments(parser)
    parser.add_argument("--output", default="predictions", help="folder for the drawings")
    model_arguments(parser)
    args = parser.parse_args(argv)
    cfg, model = load_trained(args.config_file, args.weights, args.opts)
    metadata = MetadataCatalog.get(args.dataset or cfg.DATASETS.TEST[0])
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for sample in samples(cfg, args):
        rgb = sample.image.permute(1, 2, 0).numpy()
        if cfg.INPUT.FORMAT == "BGR":
            rgb = rgb[..., ::-1]
        labels = predict_labels(model, sample.image)
        drawing = Visualizer(rgb, metadata, instance_mode=ColorMode.SEGMENTATION).draw_sem_seg(
            labels, alpha=0.6
        )
        path = output / f"{sample.name}.png"
        Image.fromarray(drawing.get_image()).save(path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
