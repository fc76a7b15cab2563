"""The training mapper of Mask2Former's semantic configs (``INPUT.DATASET_MAPPER_NAME:
mask_former_semantic``): dataset record -> image, label map and one binary mask per class.

Augmentations, in order: resize the short edge (``INPUT.MIN_SIZE_TRAIN``, ``MAX_SIZE_TRAIN``,
``MIN_SIZE_TRAIN_SAMPLING``), random crop with the single-category area limit (when
``INPUT.CROP.ENABLED``), SSD colour jitter (``INPUT.COLOR_AUG_SSD``), horizontal flip. With
``INPUT.SIZE_DIVISIBILITY`` > 0 the image (value 128) and the label (ignore) are padded
bottom/right to the next multiple of it. The official mapper pads to exactly that size instead,
which only works while every crop is at most that large; padding to the next multiple gives the
same result there and never a negative pad elsewhere.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances

from sfm_d2.data.color_aug import RandomColorJitterSSD
from sfm_d2.data.crop import RandomCropCategoryAreaLimit
from sfm_d2.data.validation import BadDataError, check_label_classes, check_label_values

IMAGE_PAD_VALUE = 128


def _read(path: str, kind: str, image_format: str | None) -> np.ndarray:
    try:
        return utils.read_image(path, format=image_format)
    except (OSError, SyntaxError, ValueError) as error:
        raise BadDataError(f"cannot read {kind}", [f"{path}: {error}"]) from error


def _train_metadata(cfg: CfgNode) -> tuple[int, int]:
    """(num_classes, ignore_label) from the config, checked against the first train dataset."""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    if not cfg.DATASETS.TRAIN:
        return num_classes, ignore_label
    name = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(name)
    meta_ignore = getattr(meta, "ignore_label", ignore_label)
    if meta_ignore != ignore_label:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={ignore_label} but dataset {name!r} declares "
            f"ignore_label={meta_ignore}; make them agree"
        )
    classes = getattr(meta, "stuff_classes", None)
    if classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} but dataset {name!r} has "
            f"{len(classes)} stuff_classes; make them agree"
        )
    return num_classes, ignore_label


def _pad_bottom_right(tensor: torch.Tensor, multiple: int, value: int) -> torch.Tensor:
    pad_h = -tensor.shape[-2] % multiple
    pad_w = -tensor.shape[-1] % multiple
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), value=value)


def semantic_instances(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """One instance per class present in ``sem_seg`` (ignore excluded): gt_classes, gt_masks."""
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_label].to(torch.int64)
    instances = Instances(tuple(sem_seg.shape))
    instances.gt_classes = classes
    instances.gt_masks = sem_seg[None] == classes[:, None, None]
    return instances


class MaskFormerSemanticDatasetMapper:
    """Map a semantic record ({file_name, sem_seg_file_name, ...}) to the training input of
    SFMMaskFormer: ``image`` uint8 CHW in ``image_format``, ``sem_seg`` int64 HxW, ``instances``
    (gt_classes int64 [n], gt_masks bool [n, H, W]), plus the record's fields."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: list[T.Augmentation | T.Transform],
        image_format: str,
        num_classes: int,
        ignore_label: int,
        size_divisibility: int,
    ) -> None:
        if not is_train:
            raise ValueError(
                "is_train must be True: this mapper is for training; at test time use detectron2's "
                "DatasetMapper(cfg, False) (sfm_d2.data.build_mapper does)"
            )
        self.num_classes, self.ignore_label = check_label_classes(num_classes, ignore_label)
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        num_classes, ignore_label = _train_metadata(cfg)
        augs: list[T.Augmentation | T.Transform] = [
            T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            )
        ]
        if cfg.INPUT.CROP.ENABLED:
            augs.append(
                RandomCropCategoryAreaLimit(
                    cfg.INPUT.CROP.TYPE,
                    tuple(cfg.INPUT.CROP.SIZE),
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                    ignore_label,
                )
            )
        if cfg.INPUT.COLOR_AUG_SSD:
            augs.append(RandomColorJitterSSD(cfg.INPUT.FORMAT))
        augs.append(T.RandomFlip(horizontal=True, vertical=False))
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": num_classes,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def _read_pair(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        missing = [key for key in ("file_name", "sem_seg_file_name") if key not in record]
        if missing:
            raise ValueError(
                f"dataset_dict must have 'file_name' and 'sem_seg_file_name' (an image and its "
                f"label map), got keys {sorted(record)} for {record.get('file_name')!r}"
            )
        image_path, label_path = record["file_name"], record["sem_seg_file_name"]
        for key, path in (("file_name", image_path), ("sem_seg_file_name", label_path)):
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(
                    f"dataset_dict[{key!r}] must be a path (str or os.PathLike), got "
                    f"{type(path).__name__} {path!r}"
                )
        image = _read(image_path, "image", self.image_format)
        label = _read(label_path, "label", None)
        if label.ndim != 2:
            raise BadDataError(
                "bad label", [f"{label_path}: shape {label.shape}, expected one class id per pixel"]
            )
        if label.shape != image.shape[:2]:
            raise BadDataError(
                "bad label",
                [f"{label_path}: size {label.shape} (HxW) differs from {image_path} {image.shape}"],
            )
        check_label_values(label, self.num_classes, self.ignore_label, label_path)
        # uint8 keeps detectron2's PIL nearest resize, the one the image's geometry follows.
        label = label.astype(np.uint8 if label.max() <= 255 else np.float64)
        return image, label

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(dataset_dict, Mapping):
            raise TypeError(f"dataset_dict must be a dict, got {type(dataset_dict).__name__}")
        record = dict(copy.deepcopy(dataset_dict))
        image, label = self._read_pair(record)
        record.setdefault("height", image.shape[0])
        record.setdefault("width", image.shape[1])
        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        # np.array copies (as ascontiguousarray does for any real HWC -> CHW transpose), so a
        # read-only decoded image never reaches torch, even where the transpose is a no-op (1x1).
        image_t = torch.as_tensor(np.array(aug_input.image.transpose(2, 0, 1), order="C"))
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        if self.size_divisibility > 0:
            image_t = _pad_bottom_right(image_t, self.size_divisibility, IMAGE_PAD_VALUE)
            sem_seg = _pad_bottom_right(sem_seg, self.size_divisibility, self.ignore_label)
        record["image"] = image_t
        record["sem_seg"] = sem_seg
        record["instances"] = semantic_instances(sem_seg, self.ignore_label)
        return record
