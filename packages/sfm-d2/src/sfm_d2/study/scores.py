"""Per-image statistics of a run, and the study's metrics computed from their sums.

For every validation image the study keeps, per class, the intersection and union of prediction
and ground truth (regions, from :func:`sfm_d2.evaluation.confusion_matrix`) and of their inner
boundary bands (:func:`sfm_d2.evaluation.boundary.boundary_statistics`). Both add up over images
to the dataset's, so any resample of images gives its exact IoU (what the bootstrap needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sfm_d2.evaluation.boundary import boundary_statistics
from sfm_d2.evaluation.confusion import confusion_matrix

Array = np.ndarray[Any, Any]
# Thin structures of the fine-detail dataset (sfm_d2.data.finedetail): lines and lattices.
THIN_CLASSES = ("wire", "pole", "fence")
BOUNDARY_WIDTH = 3  # px, as the evaluator's default


def image_statistics(
    pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_label: int = 255
) -> Array:
    """int64 ``[2, 2, K]``: ``[region, boundary] x [intersection, union] x class`` of one image."""
    confusion = confusion_matrix(pred, gt, num_classes, ignore_label).to(torch.int64)
    intersection = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - intersection
    region = torch.stack([intersection, union])
    boundary = boundary_statistics(pred, gt, num_classes, BOUNDARY_WIDTH, ignore_label)
    return torch.stack([region, boundary]).numpy()


def class_mean_iou(summed: Array, classes: Sequence[int] | None = None) -> Array:
    """Mean IoU in percent over ``classes`` (default all) with a non-empty union; NaN if none.

    ``summed``: ``[..., 2, K]`` intersections and unions; returns ``[...]``.
    """
    intersection, union = summed[..., 0, :], summed[..., 1, :]
    if classes is not None:
        intersection, union = intersection[..., list(classes)], union[..., list(classes)]
    defined = union > 0
    iou = np.divide(intersection, union, out=np.zeros(union.shape), where=defined)
    count = defined.sum(axis=-1)
    total = (iou * defined).sum(axis=-1)
    return np.divide(100.0 * total, count, out=np.full(count.shape, np.nan), where=count > 0)


def metric_functions(class_names: Sequence[str]) -> dict[str, Any]:
    """``{name: summed [..., 2, 2, K] -> [...]}``: the study's three metrics, in percent."""
    thin = [class_names.index(name) for name in THIN_CLASSES]
    return {
        "boundary IoU": lambda s: class_mean_iou(s[..., 1, :, :]),
        "thin-class IoU": lambda s: class_mean_iou(s[..., 0, :, :], thin),
        "mIoU": lambda s: class_mean_iou(s[..., 0, :, :]),
    }
