"""SSD-style photometric distortion as a detectron2 Augmentation that samples a Transform.

The distortion of SSD (Liu et al. 2016), which Mask2Former's semantic configs turn on with
``INPUT.COLOR_AUG_SSD``: each step applied with probability 1/2 -- brightness shift, contrast
scale (before or after the HSV steps, chosen at random), saturation scale, hue rotation.
Sampling lives in :class:`RandomColorJitterSSD` and the pixel work in the deterministic
:class:`ColorJitterSSDTransform`, so a drawn jitter can be inspected and re-applied; labels and
coordinates pass through unchanged. HSV is computed in floating point (matplotlib, a detectron2
dependency), so OpenCV is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from detectron2.data import transforms as T
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

SUPPORTED_FORMATS = ("RGB", "BGR")


@dataclass(frozen=True)
class SSDJitter:
    """One drawn jitter; ``None`` means the step is skipped."""

    brightness_delta: float | None = None
    contrast_factor: float | None = None
    saturation_factor: float | None = None
    hue_degrees: float | None = None
    contrast_last: bool = False


def _check_format(image_format: str) -> str:
    if image_format not in SUPPORTED_FORMATS:
        raise ValueError(
            f"image_format must be one of {', '.join(SUPPORTED_FORMATS)} for the SSD colour "
            f"augmentation, got {image_format!r}"
        )
    return image_format


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


class ColorJitterSSDTransform(T.Transform):
    """Apply one :class:`SSDJitter` to uint8 HWC images in ``image_format``; labels unchanged."""

    def __init__(self, jitter: SSDJitter, image_format: str) -> None:
        super().__init__()
        self.jitter = jitter
        self.image_format = _check_format(image_format)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"img must be a uint8 HxWx3 array, got {img.dtype} of shape {img.shape}"
            )
        rgb = img[:, :, ::-1] if self.image_format == "BGR" else img
        jitter = self.jitter
        out = rgb.astype(np.float32)
        if jitter.brightness_delta is not None:
            out = np.clip(out + jitter.brightness_delta, 0, 255)
        if jitter.contrast_factor is not None and not jitter.contrast_last:
            out = np.clip(out * jitter.contrast_factor, 0, 255)
        if jitter.saturation_factor is not None or jitter.hue_degrees is not None:
            out = self._apply_hsv(out)
        if jitter.contrast_factor is not None and jitter.contrast_last:
            out = np.clip(out * jitter.contrast_factor, 0, 255)
        result = _to_uint8(out)
        return np.ascontiguousarray(result[:, :, ::-1] if self.image_format == "BGR" else result)

    def _apply_hsv(self, rgb: np.ndarray) -> np.ndarray:
        hsv = rgb_to_hsv(rgb / 255.0)
        if self.jitter.saturation_factor is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * self.jitter.saturation_factor, 0.0, 1.0)
        if self.jitter.hue_degrees is not None:
            hsv[..., 0] = np.mod(hsv[..., 0] + self.jitter.hue_degrees / 360.0, 1.0)
        return (hsv_to_rgb(hsv) * 255.0).astype(np.float32)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class RandomColorJitterSSD(T.Augmentation):
    """Draw an SSD jitter per image: brightness +-32, contrast and saturation x[0.5, 1.5], hue
    +-36 degrees (SSD's +-18 in OpenCV's half-degree hue units), each with probability 1/2."""

    def __init__(
        self,
        image_format: str,
        *,
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_degrees: float = 36.0,
    ) -> None:
        super().__init__()
        self.image_format = _check_format(image_format)
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_degrees = hue_degrees

    def get_transform(self, image: np.ndarray) -> ColorJitterSSDTransform:
        def maybe(low: float, high: float) -> float | None:
            return float(np.random.uniform(low, high)) if np.random.rand() < 0.5 else None

        jitter = SSDJitter(
            brightness_delta=maybe(-self.brightness_delta, self.brightness_delta),
            contrast_last=bool(np.random.rand() < 0.5),
            contrast_factor=maybe(*self.contrast_range),
            saturation_factor=maybe(*self.saturation_range),
            hue_degrees=maybe(-self.hue_degrees, self.hue_degrees),
        )
        return ColorJitterSSDTransform(jitter, self.image_format)
