#!/usr/bin/env python3
"""Semantic segmentation of image files with a trained model, at each image's own size.

    python tools/predict.py --config-file CONFIG.yaml --weights model_final.pth \
        --input a.png b.jpg --output predictions/        # or --dataset NAME [--limit N]

For each image ``<name>.<ext>`` it writes ``<output>/labels/<name>.png``, the label map (one class
id per pixel; 8-bit, or 16-bit for more than 256 classes: a folder usable as a dataset's label
root), and ``<output>/<name>.png``, the image with the classes' colours blended in. The model sees
the image after the config's test resize; its scores are resized back to the image's size, as in
detectron2's evaluation. Two inputs with the same ``<name>`` are refused before anything runs.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from _common import input_arguments, load_model, model_arguments
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as d2_utils
from detectron2.data import transforms as T
from detectron2.utils.colormap import colormap
from PIL import Image

import sfm_d2  # noqa: F401  (first: its compatibility layer must run before detectron2 loads)

ALPHA = 0.6  # weight of the class colour in the drawing


def image_files(args: argparse.Namespace, dataset: str) -> list[str]:
    """``--input``, else the images of ``dataset`` (at most ``--limit``)."""
    if args.input:
        return list(args.input)
    if dataset not in DatasetCatalog.list():
        raise SystemExit(f"--dataset {dataset!r} is not registered")
    return [record["file_name"] for record in DatasetCatalog.get(dataset)[: args.limit]]


def refuse_shared_names(files: list[str]) -> None:
    """Outputs are named by the file name without its suffix: ``a.jpg`` and ``a.png`` (or
    ``x/a.png`` and ``y/a.png``) would write the same files."""
    counts = Counter(Path(f).stem for f in files)
    shared = sorted(f for f in files if counts[Path(f).stem] > 1)
    if shared:
        raise SystemExit(
            "these inputs would write the same output names (<name>.png): "
            + ", ".join(shared)
            + "; run them with different --output folders"
        )


def class_colors(metadata: object, num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8: the dataset's ``stuff_colors``, else detectron2's colormap."""
    colors = getattr(metadata, "stuff_colors", None)
    if colors and len(colors) >= num_classes:
        return np.asarray(colors[:num_classes], dtype=np.uint8)
    palette = colormap(rgb=True, maximum=255).astype(np.uint8)
    return palette[np.arange(num_classes) % len(palette)]


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, resize: T.Augmentation) -> np.ndarray:
    """Class ids ``[H, W]`` of an ``[H, W, 3]`` image in the config's format, at its own size."""
    height, width = image.shape[:2]
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    output = model([{"image": tensor, "height": height, "width": width}])[0]
    labels: np.ndarray = output["sem_seg"].argmax(dim=0).cpu().numpy()
    return labels


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    if num_classes <= 256:
        return Image.fromarray(labels.astype(np.uint8))
    return Image.fromarray(labels.astype(np.uint16))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    input_arguments(parser)
    parser.add_argument("--output", default="predictions", help="folder for the outputs")
    model_arguments(parser)
    args = parser.parse_args(argv)
    if args.input:
        refuse_shared_names(args.input)
    cfg, model = load_model(args)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    files = image_files(args, dataset)
    refuse_shared_names(files)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    colors = class_colors(MetadataCatalog.get(dataset), num_classes)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
    output = Path(args.output)
    (output / "labels").mkdir(parents=True, exist_ok=True)
    for file in files:
        image = d2_utils.read_image(file, format=cfg.INPUT.FORMAT)
        labels = predict(model, image, resize)
        rgb = image[..., ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        drawing = (1 - ALPHA) * rgb.astype(np.float32) + ALPHA * colors[labels]
        name = Path(file).stem
        written = [output / "labels" / f"{name}.png", output / f"{name}.png"]
        label_image(labels, num_classes).save(written[0])
        Image.fromarray(drawing.round().astype(np.uint8)).save(written[1])
        print(*written, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
