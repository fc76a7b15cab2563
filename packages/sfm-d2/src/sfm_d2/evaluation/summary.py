"""The flat, percent-valued result dict that detectron2's evaluators return, from summed counts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sfm_d2.evaluation.boundary import boundary_iou
from sfm_d2.evaluation.confusion import nanmean, region_scores


def sem_seg_results(
    confusion: torch.Tensor, boundary_stats: torch.Tensor, class_names: Sequence[str]
) -> dict[str, float]:
    """mIoU, fwIoU, mACC, pACC, BoundaryIoU and per-class IoU-/ACC-/BoundaryIoU-<name>, in percent."""
    if len(class_names) != confusion.shape[0] or boundary_stats.shape[-1] != confusion.shape[0]:
        raise ValueError(
            f"class_names ({len(class_names)}), confusion {tuple(confusion.shape)} and "
            f"boundary_stats {tuple(boundary_stats.shape)} must agree on the number of classes"
        )
    region = region_scores(confusion)
    boundary = boundary_iou(boundary_stats)
    results = {
        "mIoU": 100.0 * region.miou,
        "fwIoU": 100.0 * region.fwiou,
        "mACC": 100.0 * region.macc,
        "pACC": 100.0 * region.pacc,
        "BoundaryIoU": 100.0 * nanmean(boundary),
    }
    for prefix, values in (("IoU", region.iou), ("ACC", region.acc), ("BoundaryIoU", boundary)):
        for name, value in zip(class_names, values.tolist(), strict=True):
            results[f"{prefix}-{name}"] = 100.0 * value
    return results
