"""Register the datasets a config names or describes, in the process that is about to use them.

Every training process (each ``--num-gpus`` worker) has its own detectron2 catalog, so train_net
calls :func:`register_datasets` in each worker from the config alone. It knows:

* names sfm_d2 provides: the built-in fine-detail dataset, its ``quarter`` variant (detail at
  the 1/4 map, where the first ARS acts), quick (tiny) copies of both for smoke tests,
  ``quick_schedules/`` and the study's smoke run, and ADE20K and Cityscapes from ``$DETECTRON2_DATASETS``
  (sfm_d2's validating loaders replace detectron2's builtins of the same names);
* your own folders of images and label maps, described under ``DATASETS.SFM_FOLDERS``::

      DATASETS:
        TRAIN: ("my_train",)
        TEST: ("my_val",)
        SFM_FOLDERS:
          NAMES: ("my_train", "my_val")
          IMAGE_ROOTS: ("data/images/train", "data/images/val")
          LABEL_ROOTS: ("data/labels/train", "data/labels/val")
          CLASSES: ("background", "road", "wire")  # empty: "0", "1", ... (NUM_CLASSES of them)
          IMAGE_EXT: ".jpg"
          LABEL_EXT: ".png"

  Each name pairs ``IMAGE_ROOT/**/<key><IMAGE_EXT>`` with ``LABEL_ROOT/**/<key><LABEL_EXT>``
  (see :func:`sfm_d2.data.register_semantic_dataset`); relative roots are taken from the
  working directory. Label maps hold class ids ``0..NUM_CLASSES-1`` and
  ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE`` (255 by default) for pixels without a class.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from sfm_d2.data import finedetail
from sfm_d2.data.registration import register_ade20k, register_cityscapes, register_semantic_dataset

ADE20K_NAMES = ("ade20k_sem_seg_train", "ade20k_sem_seg_val")
CITYSCAPES_NAMES = ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val")
QUARTER_NAMES = finedetail.VARIANTS["quarter"].dataset_names
FOLDERS_KEY = "DATASETS.SFM_FOLDERS"


@dataclass(frozen=True)
class QuickCopy:
    """A small copy of a fine-detail variant, in its own cache folder (seconds to generate)."""

    names: dict[str, str]
    size: int
    num_train: int
    num_val: int
    variant: str = finedetail.DEFAULT_VARIANT

    def load(self, split: str) -> list[dict[str, Any]]:
        folder = finedetail.ensure_finedetail(
            size=self.size,
            num_train=self.num_train,
            num_val=self.num_val,
            progress=False,
            variant=self.variant,
        )
        return finedetail.load_finedetail(folder, split)

    def register(self) -> None:
        """Register both splits (idempotent); the files are generated on first use."""
        for split, name in self.names.items():
            if name in DatasetCatalog.list():
                continue
            DatasetCatalog.register(name, functools.partial(self.load, split))
            MetadataCatalog.get(name).set(
                stuff_classes=list(finedetail.CLASSES),
                stuff_colors=[list(color) for color in finedetail.COLORS],
                ignore_label=finedetail.IGNORE_LABEL,
                evaluator_type="sem_seg",
            )


# For smoke tests and ``quick_schedules/``: 64 px, 16 train / 8 val.
QUICK_FINEDETAIL = QuickCopy(
    {"train": "sfm_finedetail_quick_train", "val": "sfm_finedetail_quick_val"}, 64, 16, 8
)
# For the study's smoke run: the quarter variant's detail is sized for 128 px; 32 train / 8 val.
QUICK_QUARTER = QuickCopy(
    {"train": "sfm_finedetail_quarter_quick_train", "val": "sfm_finedetail_quarter_quick_val"},
    128,
    32,
    8,
    variant="quarter",
)
QUICK_FINEDETAIL_NAMES = QUICK_FINEDETAIL.names
QUICK_QUARTER_NAMES = QUICK_QUARTER.names


def folder_classes(cfg: CfgNode) -> list[str]:
    """``DATASETS.SFM_FOLDERS.CLASSES``, or ``"0".."K-1"`` for K = MODEL.SEM_SEG_HEAD.NUM_CLASSES."""
    folders = cfg.DATASETS.SFM_FOLDERS
    count = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    classes = [str(c) for c in folders.CLASSES] or [str(i) for i in range(count)]
    if len(classes) != count:
        raise ValueError(
            f"{FOLDERS_KEY}.CLASSES names {len(classes)} classes but "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {count}: they must agree"
        )
    return classes


def register_folder_datasets(cfg: CfgNode) -> list[str]:
    """Register every dataset of ``DATASETS.SFM_FOLDERS`` (replacing a name already registered,
    so a second call is harmless); return the names. Errors name the key that is wrong."""
    folders = cfg.DATASETS.SFM_FOLDERS
    names, images, labels = (
        list(folders.NAMES),
        list(folders.IMAGE_ROOTS),
        list(folders.LABEL_ROOTS),
    )
    if not names and not images and not labels:
        return []
    if not len(names) == len(images) == len(labels):
        raise ValueError(
            f"{FOLDERS_KEY}.NAMES, .IMAGE_ROOTS and .LABEL_ROOTS must have one entry per dataset, "
            f"got {len(names)}, {len(images)} and {len(labels)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{FOLDERS_KEY}.NAMES must be distinct, got {names}")
    for key, values in (("IMAGE_ROOTS", images), ("LABEL_ROOTS", labels)):
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"{FOLDERS_KEY}.{key} must be folder paths, got {values}")
    classes = folder_classes(cfg)
    for name, image_root, label_root in zip(names, images, labels, strict=True):
        try:
            register_semantic_dataset(
                name,
                image_root,
                label_root,
                classes,
                ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                image_ext=folders.IMAGE_EXT,
                label_ext=folders.LABEL_EXT,
                replace=True,
            )
        except ValueError as error:
            raise ValueError(f"{FOLDERS_KEY}: {error}") from error
    return names


def register_datasets(cfg: CfgNode) -> None:
    """Register the datasets of ``DATASETS.SFM_FOLDERS`` and those of ``DATASETS.TRAIN/TEST``
    that sfm_d2 provides (cheap: no file I/O; files are checked when a dataset is loaded).

    Call it in every process that builds a loader (train_net does, in each worker). Other names
    must already be registered, e.g. with :func:`sfm_d2.data.register_semantic_dataset` in a
    module your script imports.
    """
    own = set(register_folder_datasets(cfg))
    names = (set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)) - own
    if names & set(finedetail.DATASET_NAMES.values()):
        finedetail.register_finedetail()
    if names & set(QUARTER_NAMES.values()):
        finedetail.register_finedetail(variant="quarter")
    for copy in (QUICK_FINEDETAIL, QUICK_QUARTER):
        if names & set(copy.names.values()):
            copy.register()
    if names & set(ADE20K_NAMES):
        register_ade20k()
    if names & set(CITYSCAPES_NAMES):
        register_cityscapes()
