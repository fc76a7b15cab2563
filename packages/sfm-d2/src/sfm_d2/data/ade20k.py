"""ADE20K label preparation: the released PNGs use 0 for "unlabelled" and 1..150 for classes;
detectron2's ``ade20k_sem_seg_*`` datasets expect 0..149 with 255 ignored.

:func:`prepare_ade20k` writes ``annotations_detectron2/{training,validation}`` beside the
released ``annotations/`` folder (k -> k-1, 0 -> 255). Each file is written to a temporary name
and renamed, so an interrupted run never leaves a half-written label behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from sfm_d2.data.registration import ADE20K_DIR, datasets_root
from sfm_d2.data.validation import BadDataError

ADE20K_NUM_CLASSES = 150
RAW_SPLITS = ("training", "validation")


def shift_ade20k_label(raw: np.ndarray) -> np.ndarray:
    """Released ADE20K ids (0 unlabelled, 1..150) -> detectron2's (0..149, 255 ignored)."""
    return ((raw.astype(np.int64) - 1) % 256).astype(np.uint8)


def _convert(source: Path, target: Path) -> None:
    with Image.open(source) as image:
        if image.mode not in ("L", "P"):
            raise BadDataError(
                "bad ADE20K label", [f"{source}: mode {image.mode!r}, expected 8-bit ids"]
            )
        raw = np.asarray(image)
    if raw.size and int(raw.max()) > ADE20K_NUM_CLASSES:
        raise BadDataError(
            "bad ADE20K label",
            [f"{source}: value {int(raw.max())} found, released ids are 0..{ADE20K_NUM_CLASSES}"],
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    Image.fromarray(shift_ade20k_label(raw)).save(partial, format="PNG")
    os.replace(partial, target)


def prepare_ade20k(
    root: str | os.PathLike[str] | None = None,
    *,
    splits: Iterable[str] = RAW_SPLITS,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, int]:
    """Write ``<root>/ADEChallengeData2016/annotations_detectron2/<split>/*.png``; return the
    number of labels written per split. ``root`` defaults to ``$DETECTRON2_DATASETS``.
    ``progress(split, done, total)`` is called after each file when given."""
    base = datasets_root(root) / ADE20K_DIR
    counts: dict[str, int] = {}
    for split in splits:
        source_dir = base / "annotations" / split
        if not source_dir.is_dir():
            raise BadDataError(
                "ADE20K annotations missing",
                [f"{source_dir}: not a directory (expected ADEChallengeData2016 as released)"],
            )
        sources = sorted(source_dir.rglob("*.png"))
        for done, source in enumerate(sources, 1):
            relative = source.relative_to(source_dir)
            _convert(source, base / "annotations_detectron2" / split / relative)
            if progress is not None:
                progress(split, done, len(sources))
        counts[split] = len(sources)
    return counts
