"""Register the datasets a config names, before train_net builds any loader.

sfm_d2 provides five families: the built-in fine-detail dataset, its ``quarter`` variant (detail
at the 1/4 map, where the first ARS acts), a quick (tiny) copy of the former for smoke tests and
``quick_schedules/`` (and of the latter for the study's smoke run), and ADE20K and Cityscapes from ``$DETECTRON2_DATASETS``
(sfm_d2's validating loaders replace detectron2's builtins of the same names).
"""

from __future__ import annotations

import functools
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from sfm_d2.data import finedetail, register_ade20k, register_cityscapes

ADE20K_NAMES = ("ade20k_sem_seg_train", "ade20k_sem_seg_val")
CITYSCAPES_NAMES = ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val")
# The quick copy: 64 px images, 16 train / 8 val, in its own cache folder (seconds to generate).
QUICK_FINEDETAIL_NAMES = {
    "train": "sfm_finedetail_quick_train",
    "val": "sfm_finedetail_quick_val",
}
QUICK_SIZE, QUICK_NUM_TRAIN, QUICK_NUM_VAL = 64, 16, 8
QUARTER_NAMES = finedetail.VARIANTS["quarter"].dataset_names
# The quarter variant's quick copy: 128 px (its detail is sized for 128 px), 32 train / 8 val.
QUICK_QUARTER_NAMES = {
    "train": "sfm_finedetail_quarter_quick_train",
    "val": "sfm_finedetail_quarter_quick_val",
}
QUICK_QUARTER_NUM_TRAIN, QUICK_QUARTER_NUM_VAL = 32, 8


def _load_quick_finedetail(split: str) -> list[dict[str, Any]]:
    folder = finedetail.ensure_finedetail(
        size=QUICK_SIZE, num_train=QUICK_NUM_TRAIN, num_val=QUICK_NUM_VAL, progress=False
    )
    return finedetail.load_finedetail(folder, split)


def register_quick_finedetail() -> None:
    """Register ``sfm_finedetail_quick_{train,val}`` (idempotent); generated on first use."""
    for split, name in QUICK_FINEDETAIL_NAMES.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, functools.partial(_load_quick_finedetail, split))
        MetadataCatalog.get(name).set(
            stuff_classes=list(finedetail.CLASSES),
            stuff_colors=[list(color) for color in finedetail.COLORS],
            ignore_label=finedetail.IGNORE_LABEL,
            evaluator_type="sem_seg",
        )


def _load_quick_quarter(split: str) -> list[dict[str, Any]]:
    folder = finedetail.ensure_finedetail(
        num_train=QUICK_QUARTER_NUM_TRAIN,
        num_val=QUICK_QUARTER_NUM_VAL,
        progress=False,
        variant="quarter",
    )
    return finedetail.load_finedetail(folder, split)


def register_quick_quarter() -> None:
    """Register ``sfm_finedetail_quarter_quick_{train,val}`` (idempotent); generated on first use."""
    for split, name in QUICK_QUARTER_NAMES.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, functools.partial(_load_quick_quarter, split))
        MetadataCatalog.get(name).set(
            stuff_classes=list(finedetail.CLASSES),
            stuff_colors=[list(color) for color in finedetail.COLORS],
            ignore_label=finedetail.IGNORE_LABEL,
            evaluator_type="sem_seg",
        )


def register_datasets(cfg: CfgNode) -> None:
    """Register those of ``cfg.DATASETS.TRAIN/TEST`` that sfm_d2 provides (cheap: no file I/O).

    Other names must already be registered, e.g. with
    :func:`sfm_d2.data.register_semantic_dataset`.
    """
    names = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    if names & set(finedetail.DATASET_NAMES.values()):
        finedetail.register_finedetail()
    if names & set(QUARTER_NAMES.values()):
        finedetail.register_finedetail(variant="quarter")
    if names & set(QUICK_FINEDETAIL_NAMES.values()):
        register_quick_finedetail()
    if names & set(QUICK_QUARTER_NAMES.values()):
        register_quick_quarter()
    if names & set(ADE20K_NAMES):
        register_ade20k()
    if names & set(CITYSCAPES_NAMES):
        register_cityscapes()
