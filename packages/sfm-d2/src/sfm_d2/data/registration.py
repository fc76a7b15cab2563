"""Register semantic-segmentation datasets (custom folders, ADE20K, Cityscapes) with validation.

Every dataset is a pair of folders: images and label maps (one class id per pixel), matched by
their path relative to the folder with the suffix removed. Loading (``DatasetCatalog.get``) pairs
them and runs :func:`~sfm_d2.data.validation.validate_semantic_records`, so a missing, unreadable,
truncated or wrongly sized file, or an out-of-range label, is reported with its path before
training starts. Registration only checks the arguments: the files may appear later.

ADE20K and Cityscapes keep detectron2's builtin names and metadata keys and are looked for under
``$DETECTRON2_DATASETS`` (default ``datasets``), as detectron2's builtin registrations do;
registering replaces those builtins (fixed at detectron2's import) with validating loaders::

    $DETECTRON2_DATASETS/ADEChallengeData2016/
        images/{training,validation}/*.jpg
        annotations_detectron2/{training,validation}/*.png   (the repository's
                                                              tools/prepare_ade20k_sem_seg.py)
    $DETECTRON2_DATASETS/cityscapes/
        leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
        gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png (cityscapesscripts createTrainIdLabelImgs)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, CITYSCAPES_CATEGORIES

from sfm_d2.data.validation import BadDataError, check_label_classes, validate_semantic_records

ADE20K_DIR = "ADEChallengeData2016"
ADE20K_SPLITS = {"train": "training", "val": "validation"}
CITYSCAPES_DIR = "cityscapes"
CITYSCAPES_SPLITS = ("train", "val")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


def datasets_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root``, else ``$DETECTRON2_DATASETS``, else ``datasets`` (detectron2's convention)."""
    if root is None:
        root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return Path(root).expanduser()


def _files_by_key(folder: Path, suffix: str) -> dict[str, Path]:
    """Files under ``folder`` ending in ``suffix``, keyed by relative path without the suffix."""
    found: dict[str, Path] = {}
    for path in folder.rglob(f"*{suffix}"):
        if path.is_file():
            found[path.relative_to(folder).as_posix()[: -len(suffix)]] = path
    return found


def pair_images_and_labels(
    image_root: str | os.PathLike[str],
    label_root: str | os.PathLike[str],
    *,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    hint: str = "",
) -> list[dict[str, Any]]:
    """Records ``{file_name, sem_seg_file_name}`` sorted by key; raise :class:`BadDataError`
    naming each image without a label and each label without an image."""
    image_dir, label_dir = Path(image_root), Path(label_root)
    for name, folder in (("image_root", image_dir), ("label_root", label_dir)):
        if not folder.is_dir():
            raise BadDataError(
                "dataset folder missing", [f"{folder}: {name} is not a directory{hint}"]
            )
    images = _files_by_key(image_dir, image_ext)
    labels = _files_by_key(label_dir, label_ext)
    if not images:
        raise BadDataError("no images", [f"{image_dir}: no '*{image_ext}' files{hint}"])
    problems = [
        f"{images[key]}: missing label file {label_dir / (key + label_ext)}{hint}"
        for key in sorted(images.keys() - labels.keys())
    ]
    problems += [
        f"{labels[key]}: label without an image (expected {image_dir / (key + image_ext)})"
        for key in sorted(labels.keys() - images.keys())
    ]
    if problems:
        raise BadDataError(f"unpaired files in {image_dir} and {label_dir}", problems)
    return [
        {"file_name": str(images[key]), "sem_seg_file_name": str(labels[key])}
        for key in sorted(images)
    ]


def _check_register_args(
    name: object, classes: object, ignore_label: object, image_ext: object, label_ext: object
) -> list[str]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
        raise ValueError(f"classes must be a non-empty sequence of class names, got {classes!r}")
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct str names, got {list(classes)!r}")
    check_label_classes(len(classes), ignore_label)
    for arg, ext in (("image_ext", image_ext), ("label_ext", label_ext)):
        if not isinstance(ext, str) or not ext:
            raise ValueError(f"{arg} must be a non-empty str suffix such as '.png', got {ext!r}")
    return list(classes)


def _register(
    name: str,
    image_root: Path,
    label_root: Path,
    classes: list[str],
    *,
    ignore_label: int,
    image_ext: str,
    label_ext: str,
    evaluator_type: str,
    replace: bool,
    hint: str = "",
    **metadata: Any,
) -> None:
    if name in DatasetCatalog.list():
        if not replace:
            raise ValueError(
                f"name {name!r} is already registered in DatasetCatalog; pick another name or "
                "pass replace=True"
            )
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)

    def load() -> list[dict[str, Any]]:
        records = pair_images_and_labels(
            image_root, label_root, image_ext=image_ext, label_ext=label_ext, hint=hint
        )
        return validate_semantic_records(
            records, len(classes), ignore_label, what=f"dataset {name!r}"
        )

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=classes,
        ignore_label=ignore_label,
        evaluator_type=evaluator_type,
        image_root=str(image_root),
        sem_seg_root=str(label_root),
        **metadata,
    )


def register_semantic_dataset(
    name: str,
    image_root: str | os.PathLike[str],
    label_root: str | os.PathLike[str],
    classes: Sequence[str],
    *,
    ignore_label: int = 255,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    evaluator_type: str = "sem_seg",
    replace: bool = False,
) -> None:
    """Register ``name``: images ``image_root/**/<key><image_ext>`` with label maps
    ``label_root/**/<key><label_ext>`` holding ids ``0..len(classes)-1`` or ``ignore_label``.

    Arguments are checked now (``ignore_label`` may not be a class id); files when the dataset is
    loaded, with an error naming each bad file. ``replace`` re-registers an existing name.
    """
    checked = _check_register_args(name, classes, ignore_label, image_ext, label_ext)
    _register(
        name,
        Path(image_root),
        Path(label_root),
        checked,
        ignore_label=ignore_label,
        image_ext=image_ext,
        label_ext=label_ext,
        evaluator_type=evaluator_type,
        replace=replace,
    )


def register_ade20k(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Register ``ade20k_sem_seg_{train,val}`` (150 classes, ignore 255) under ``root`` /
    ``$DETECTRON2_DATASETS``, replacing detectron2's builtins; returns the names."""
    base = datasets_root(root) / ADE20K_DIR
    hint = (
        f" (expected {base}/images/<split>/*.jpg and {base}/annotations_detectron2/<split>/*.png;"
        " create the latter with the repository's tools/prepare_ade20k_sem_seg.py)"
    )
    names = []
    for split, folder in ADE20K_SPLITS.items():
        name = f"ade20k_sem_seg_{split}"
        _register(
            name,
            base / "images" / folder,
            base / "annotations_detectron2" / folder,
            list(ADE20K_SEM_SEG_CATEGORIES),
            ignore_label=255,
            image_ext=".jpg",
            label_ext=".png",
            evaluator_type="sem_seg",
            replace=True,
            hint=hint,
        )
        names.append(name)
    return names


def register_cityscapes(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Register ``cityscapes_fine_sem_seg_{train,val}`` (19 train ids, ignore 255) under ``root``
    / ``$DETECTRON2_DATASETS``, replacing detectron2's builtins; returns the names.

    ``evaluator_type`` is "sem_seg" (mIoU over the 19 train ids, as Cityscapes' own script
    reports it) rather than detectron2's "cityscapes_sem_seg", which needs cityscapesscripts.
    """
    base = datasets_root(root) / CITYSCAPES_DIR
    categories = sorted(CITYSCAPES_CATEGORIES, key=lambda c: c["trainId"])
    hint = (
        f" (expected {base}/leftImg8bit/<split>/<city>/*{CITYSCAPES_IMAGE_SUFFIX} and "
        f"{base}/gtFine/<split>/<city>/*{CITYSCAPES_LABEL_SUFFIX}; create the labels with "
        "cityscapesscripts' createTrainIdLabelImgs)"
    )
    names = []
    for split in CITYSCAPES_SPLITS:
        name = f"cityscapes_fine_sem_seg_{split}"
        image_dir, gt_dir = base / "leftImg8bit" / split, base / "gtFine" / split
        _register(
            name,
            image_dir,
            gt_dir,
            [c["name"] for c in categories],
            ignore_label=255,
            image_ext=CITYSCAPES_IMAGE_SUFFIX,
            label_ext=CITYSCAPES_LABEL_SUFFIX,
            evaluator_type="sem_seg",
            replace=True,
            hint=hint,
            stuff_colors=[list(c["color"]) for c in categories],
            image_dir=str(image_dir),
            gt_dir=str(gt_dir),
        )
        names.append(name)
    return names
