"""Checks of semantic-segmentation data that name the bad file, run when a dataset is loaded.

Bad data otherwise surfaces thousands of iterations later, far from its cause: a label value >=
NUM_CLASSES becomes a CUDA device-side assert, a truncated PNG kills one dataloader worker, an
image/label size mismatch crashes inside an augmentation. :func:`validate_semantic_records` finds
these problems up front and reports every bad file with what is wrong with it.

Cost (measured on the 2-core CI-type machine, shared, with 200 pairs of 512x683 JPEG + 8-bit
PNG in the page cache, timing validate_semantic_records):
* header checks (always): open both files' headers with PIL and read the last KiB of each for
  the format's end marker (a JPEG without one is decoded to decide): 0.35-0.45 ms per record,
  so ADE20K's 20k training records take about 8 s.
* full checks (``full=True``; the default for at most :data:`FULL_CHECK_MAX_RECORDS` records):
  also decode every image and label and check every label value: about 10 ms per record
  (ADE20K train would take about 3.5 min, hence headers only for large sets by default).
The train mapper checks label values of each sample it reads anyway (one pass over the label),
so a large dataset validated by headers only still names a bad label file on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

# Datasets with at most this many records get the full check (decode + label range) by default.
FULL_CHECK_MAX_RECORDS = 1000
# Problems listed in one error message (the count of all of them is always given).
MAX_LISTED_PROBLEMS = 20
# PIL modes that hold one class id per pixel.
LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"
_TAIL_BYTES = 1024
_EXIF_ORIENTATION = 0x0112


class BadDataError(ValueError):
    """Bad files in a dataset; ``problems`` holds one ``"path: what is wrong"`` line per problem."""

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        listed = "\n  ".join(self.problems[:MAX_LISTED_PROBLEMS])
        more = len(self.problems) - MAX_LISTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{what}: {len(self.problems)} problem(s):\n  {listed}{tail}")


def check_label_classes(num_classes: object, ignore_label: object) -> tuple[int, int]:
    """Return ``(num_classes, ignore_label)`` if ignore cannot collide with a class id, else raise."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, int) or ignore_label < 0:
        raise ValueError(f"ignore_label must be a non-negative int, got {ignore_label!r}")
    if ignore_label < num_classes:
        raise ValueError(
            f"too many classes: {num_classes} classes use ids 0..{num_classes - 1}, which include "
            f"ignore_label={ignore_label}; use fewer classes or an ignore_label >= {num_classes}"
        )
    return num_classes, ignore_label


def label_value_problem(label: np.ndarray, num_classes: int, ignore_label: int) -> str | None:
    """Describe the label values outside ``[0, num_classes)`` other than ``ignore_label``, if any."""
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_label)
    if not bad.any():
        return None
    values = np.unique(label[bad])
    shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if values.size > 10 else "")
    message = (
        f"label values out of range: {shown} ({int(bad.sum())} pixels); expected class ids "
        f"0..{num_classes - 1} or ignore_label {ignore_label}"
    )
    present = np.unique(label)
    if values.size == 1 and int(values[0]) == num_classes and 0 in present:
        message += " (labels look 1-based with 0 = unlabelled: shift them, e.g. prepare_ade20k)"
    return message


def check_label_values(
    label: np.ndarray, num_classes: int, ignore_label: int, file_name: str
) -> None:
    """Raise :class:`BadDataError` naming ``file_name`` if ``label`` holds an out-of-range id."""
    problem = label_value_problem(label, num_classes, ignore_label)
    if problem is not None:
        raise BadDataError("bad label", [f"{file_name}: {problem}"])


def _end_marker_missing(path: str, marker: bytes) -> bool:
    """True when ``marker`` is not in the file's last KiB (a cheap truncation test)."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - _TAIL_BYTES))
        return marker not in f.read()


def _open(path: str, kind: str, *, decode: bool) -> tuple[Image.Image | None, str | None]:
    """Open ``path`` (decoding it when asked or when it looks truncated), or say what is wrong.

    A PNG must end with its IEND chunk. A JPEG without its end marker is decoded to decide, since
    some cameras append data after it; PIL raises on a JPEG whose image data is cut short.
    """
    if not os.path.isfile(path):
        return None, f"{path}: missing {kind} file"
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        return None, f"{path}: unreadable {kind}: not an image file PIL can identify"
    except (OSError, SyntaxError, ValueError) as error:
        return None, f"{path}: unreadable or truncated {kind}: {error}"
    try:
        if image.format == "PNG" and _end_marker_missing(path, _PNG_END):
            raise OSError("no IEND chunk at the end of the PNG")
        if decode or (image.format == "JPEG" and _end_marker_missing(path, _JPEG_END)):
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        image.close()
        return None, f"{path}: unreadable or truncated {kind}: {error}"
    return image, None


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as detectron2's read_image returns it: EXIF rotations by 90 degrees swap."""
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if image.format == "JPEG" else 1
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _check_record(
    record: Mapping[str, Any], num_classes: int, ignore_label: int, full: bool
) -> tuple[list[str], tuple[int, int] | None]:
    """The problems of one record, and its image's (width, height) when it could be read."""
    missing = [key for key in ("file_name", "sem_seg_file_name") if key not in record]
    if missing:
        return [f"record {dict(record)!r}: no {' or '.join(missing)}"], None
    image_path, label_path = str(record["file_name"]), str(record["sem_seg_file_name"])
    image, image_problem = _open(image_path, "image", decode=full)
    label, label_problem = _open(label_path, "label", decode=full)
    problems = [p for p in (image_problem, label_problem) if p is not None]
    size = None if image is None else _oriented_size(image)
    if size is not None:
        expected = (record.get("width", size[0]), record.get("height", size[1]))
        if tuple(expected) != size:
            problems.append(
                f"{image_path}: size {size[0]}x{size[1]} (WxH) differs from the record's "
                f"width x height {expected[0]}x{expected[1]}"
            )
    if size is not None and label is not None:
        if label.size != size:
            problems.append(
                f"{label_path}: size {label.size[0]}x{label.size[1]} (WxH) differs from its "
                f"image {image_path} ({size[0]}x{size[1]})"
            )
        if label.mode not in LABEL_MODES:
            problems.append(
                f"{label_path}: label mode {label.mode!r} is not one class id per pixel "
                f"(expected one of {', '.join(LABEL_MODES)}; colour-coded labels need converting)"
            )
        elif full:
            problem = label_value_problem(np.asarray(label), num_classes, ignore_label)
            if problem is not None:
                problems.append(f"{label_path}: {problem}")
    for opened in (image, label):
        if opened is not None:
            opened.close()
    return problems, size


def validate_semantic_records(
    records: Iterable[Mapping[str, Any]],
    num_classes: int,
    ignore_label: int = 255,
    *,
    full: bool | None = None,
    what: str = "dataset",
) -> list[dict[str, Any]]:
    """Check every record's image and label; return the records with ``height``/``width`` set.

    Header checks always run; ``full`` (decode everything, check every label value) defaults to
    on for at most :data:`FULL_CHECK_MAX_RECORDS` records. Raises :class:`BadDataError` (a
    ``ValueError``) listing each bad file and its problem; ``what`` names the dataset there.
    """
    num_classes, ignore_label = check_label_classes(num_classes, ignore_label)
    records = [dict(r) for r in records]
    if full is None:
        full = len(records) <= FULL_CHECK_MAX_RECORDS
    problems: list[str] = []
    for record in records:
        found, size = _check_record(record, num_classes, ignore_label, full)
        problems.extend(found)
        if size is not None:
            record.setdefault("width", size[0])
            record.setdefault("height", size[1])
    if problems:
        raise BadDataError(what, problems)
    return records
