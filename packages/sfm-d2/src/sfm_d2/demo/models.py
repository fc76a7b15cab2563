"""A trained model and its data, as the demo and the tools need them (inference only, CPU or GPU)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as d2_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image
from torch import nn

from sfm_d2.config import load_config
from sfm_d2.data.config_datasets import register_datasets
from sfm_d2.engine.checkpointer import SFMCheckpointer


def load_trained(
    config_file: str | Path,
    weights: str | Path | None = None,
    opts: Sequence[str] = (),
    *,
    require_weights: bool = True,
) -> tuple[CfgNode, nn.Module]:
    """``(cfg, model)``: the config (+ ``opts``) and its model in eval mode with ``weights`` loaded.

    ``weights`` defaults to the config's ``MODEL.WEIGHTS``; without any and with
    ``require_weights=False`` the model keeps its initialisation (enough to count parameters and
    FLOPs). The datasets the config names are registered, for their metadata (class names).
    """
    cfg = load_config(config_file, opts)
    if weights is not None:
        cfg.MODEL.WEIGHTS = str(weights)
    if cfg.MODEL.WEIGHTS and not Path(cfg.MODEL.WEIGHTS).is_file():
        raise ValueError(f"weights {cfg.MODEL.WEIGHTS!r} is not a file")
    if require_weights and not cfg.MODEL.WEIGHTS:
        raise ValueError("weights must be given (or MODEL.WEIGHTS set): a trained .pth file")
    cfg.freeze()
    register_datasets(cfg)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        SFMCheckpointer(model).load(cfg.MODEL.WEIGHTS)  # refuses pickles that run code
    return cfg, model.eval()


@dataclass(frozen=True)
class Sample:
    """One image as the model gets it (after the test resize) and its labels, if known."""

    name: str
    image: torch.Tensor  # uint8 [3, H, W] in INPUT.FORMAT
    labels: torch.Tensor | None  # int64 [H, W] (nearest-resized like the image), or None


def _test_resize(cfg: CfgNode) -> T.Augmentation:
    return T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")


def read_sample(
    cfg: CfgNode, image_file: str | Path, label_file: str | Path | None = None
) -> Sample:
    """An image file (and optional label PNG) resized as detectron2's test mapper does."""
    image = d2_utils.read_image(str(image_file), format=cfg.INPUT.FORMAT)
    transform = _test_resize(cfg).get_transform(image)
    pixels = torch.from_numpy(np.ascontiguousarray(transform.apply_image(image).transpose(2, 0, 1)))
    labels = None
    if label_file is not None:
        label_array = np.asarray(Image.open(label_file), dtype=np.uint8)
        resized = transform.apply_segmentation(label_array)
        labels = torch.from_numpy(resized.astype(np.int64))
    return Sample(Path(image_file).stem, pixels, labels)


def dataset_samples(cfg: CfgNode, dataset: str, limit: int | None = None) -> Iterator[Sample]:
    """The images (and labels) of a registered dataset, in order, at most ``limit`` of them."""
    if dataset not in DatasetCatalog.list():
        raise ValueError(f"dataset {dataset!r} is not registered")
    records: list[dict[str, Any]] = DatasetCatalog.get(dataset)
    for record in records[:limit]:
        yield read_sample(cfg, record["file_name"], record.get("sem_seg_file_name"))


def normalized_batch(model: nn.Module, images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[B, 3, H, W]`` backbone input: normalised and padded as the model's own preprocessing."""
    return model.preprocess_image([{"image": image} for image in images]).tensor  # type: ignore[operator,no-any-return]


@torch.no_grad()
def predict_labels(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Class id per pixel ``[H, W]`` (int64, CPU) of one uint8 ``[3, H, W]`` image."""
    height, width = image.shape[-2:]
    output = model([{"image": image, "height": height, "width": width}])[0]
    return output["sem_seg"].argmax(dim=0).cpu()


def class_palette(cfg: CfgNode) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and RGB colours of the config's first test dataset (grey-scale ramp if none)."""
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    count = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names = list(getattr(metadata, "stuff_classes", None) or [str(i) for i in range(count)])
    colors = getattr(metadata, "stuff_colors", None)
    if not colors:
        colors = [(int(255 * i / max(count - 1, 1)),) * 3 for i in range(count)]
    return names, [tuple(int(v) for v in c) for c in colors]  # type: ignore[misc]
