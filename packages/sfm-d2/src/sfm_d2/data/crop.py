"""Random crop that avoids windows dominated by one category (Mask2Former's semantic crop).

A crop where one class covers nearly every labelled pixel teaches little and destabilises the
set loss, so ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`` < 1 asks for a window in which at least two
classes are present and the largest covers less than that fraction of the labelled (non-ignore)
pixels. Like the official mapper this draws up to ``max_attempts`` windows and takes the first
that qualifies; unlike it, when none qualifies it keeps the least dominated window drawn rather
than the last one.
"""

from __future__ import annotations

import numpy as np
from detectron2.data import transforms as T

# detectron2's RandomCrop types (INPUT.CROP.TYPE).
CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")


def dominant_fraction(window: np.ndarray, ignore_label: int | None) -> float:
    """Largest single-class share of the labelled pixels; 1.0 if fewer than two classes."""
    values = window.ravel()
    if ignore_label is not None:
        values = values[values != ignore_label]
    if values.size == 0:
        return 1.0
    _, counts = np.unique(values, return_counts=True)
    if counts.size < 2:
        return 1.0
    return float(counts.max()) / float(values.size)


class RandomCropCategoryAreaLimit(T.Augmentation):
    """Random crop (detectron2 ``RandomCrop`` sizes) whose largest category covers less than
    ``single_category_max_area`` of the window's non-ignore pixels; 1.0 turns the limit off."""

    def __init__(
        self,
        crop_type: str,
        crop_size: tuple[float, float],
        single_category_max_area: float = 1.0,
        ignore_label: int | None = None,
        max_attempts: int = 10,
    ) -> None:
        super().__init__()
        if not 0.0 < single_category_max_area <= 1.0:
            raise ValueError(
                f"single_category_max_area must be in (0, 1], got {single_category_max_area!r}"
            )
        if crop_type not in CROP_TYPES:
            raise ValueError(f"crop_type must be one of {', '.join(CROP_TYPES)}, got {crop_type!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive int, got {max_attempts!r}")
        self.crop_type = crop_type
        self.crop_size = crop_size
        self.single_category_max_area = single_category_max_area
        self.ignore_label = ignore_label
        self.max_attempts = max_attempts
        self._sizes = T.RandomCrop(crop_type, crop_size)

    def _draw(self, height: int, width: int) -> tuple[int, int, int, int]:
        crop_h, crop_w = self._sizes.get_crop_size((height, width))
        if not (0 < crop_h <= height and 0 < crop_w <= width):
            raise ValueError(
                f"crop_size {tuple(self.crop_size)} with crop_type {self.crop_type!r} gives a "
                f"{crop_h}x{crop_w} window for a {height}x{width} image; sizes in pixels need "
                "crop_type 'absolute', fractions in (0, 1] the 'relative' types"
            )
        y0 = int(np.random.randint(height - crop_h + 1))
        x0 = int(np.random.randint(width - crop_w + 1))
        return x0, y0, int(crop_w), int(crop_h)

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> T.CropTransform:
        height, width = sem_seg.shape[:2]
        if image.shape[:2] != (height, width):
            raise ValueError(
                f"image and sem_seg must have the same size, got {image.shape[:2]} and "
                f"{sem_seg.shape[:2]}"
            )
        if self.single_category_max_area >= 1.0:
            return T.CropTransform(*self._draw(height, width))
        best, best_fraction = None, float("inf")
        for _ in range(self.max_attempts):
            x0, y0, w, h = window = self._draw(height, width)
            fraction = dominant_fraction(sem_seg[y0 : y0 + h, x0 : x0 + w], self.ignore_label)
            if fraction < self.single_category_max_area:
                return T.CropTransform(*window)
            if fraction < best_fraction:
                best, best_fraction = window, fraction
        assert best is not None
        return T.CropTransform(*best)
