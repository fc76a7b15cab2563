"""Confusion matrix and the region metrics of semantic segmentation, in torch alone.

Counts are int64 sums over pixels, so the statistics of any split of a dataset add up to those of
the whole (what makes multi-process evaluation exact). Conventions follow detectron2's
SemSegEvaluator: ignored pixels are dropped; a class absent from both prediction and ground
truth has NaN scores and is left out of every mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _label_map(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [H, W], got {type(value).__name__}")
    if value.dim() != 2 or value.dtype.is_floating_point or value.dtype == torch.bool:
        raise ValueError(
            f"{name} must be a 2-D integer tensor [H, W], got {value.dtype} {tuple(value.shape)}"
        )
    return value


def check_label_maps(pred: object, gt: object, num_classes: int, ignore_label: int) -> None:
    """Raise unless ``pred``/``gt`` are equal-shaped 2-D integer maps with ids in range."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    pred, gt = _label_map("pred", pred), _label_map("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(
            f"pred must hold class ids in [0, {num_classes}), "
            f"got values in [{int(pred.min())}, {int(pred.max())}]"
        )
    bad = gt[(gt != ignore_label) & ((gt < 0) | (gt >= num_classes))]
    if bad.numel():
        raise ValueError(
            f"gt must hold class ids in [0, {num_classes}) or the ignore label {ignore_label}, "
            f"got {sorted(int(v) for v in bad.unique()[:5])}"
        )


def confusion_matrix(
    pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_label: int = 255
) -> torch.Tensor:
    """int64 [K, K]: entry [g, p] counts the non-ignored pixels of class g predicted as p."""
    check_label_maps(pred, gt, num_classes, ignore_label)
    valid = gt != ignore_label
    index = gt[valid].to(torch.int64) * num_classes + pred.to(gt.device)[valid].to(torch.int64)
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def nanmean(values: torch.Tensor) -> float:
    """Mean over the entries that are not NaN; NaN if there is none."""
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else float("nan")


@dataclass(frozen=True)
class RegionScores:
    """Region metrics as fractions in [0, 1]; per-class tensors are float64 [K], NaN if undefined."""

    iou: torch.Tensor
    acc: torch.Tensor
    miou: float
    macc: float
    fwiou: float
    pacc: float


def region_scores(confusion: torch.Tensor) -> RegionScores:
    """IoU and accuracy per class from a summed :func:`confusion_matrix`, and their summaries.

    ``iou``: TP / (GT + pred - TP), NaN for a class absent from both; ``acc``: TP / GT, NaN for a
    class absent from the ground truth; ``miou``/``macc``: their means over defined classes;
    ``fwiou``: IoU weighted by ground-truth frequency; ``pacc``: the fraction of pixels right.
    A class predicted but absent from the ground truth has IoU 0 (detectron2 0.6 reports NaN
    for that class, yet counts it as 0 in its mIoU, so the means agree).
    """
    if (
        not isinstance(confusion, torch.Tensor)
        or confusion.dim() != 2
        or confusion.shape[0] != confusion.shape[1]
    ):
        raise ValueError(f"confusion must be a square [K, K] tensor, got {confusion!r}")
    matrix = confusion.to(torch.float64)
    true_positive = matrix.diagonal()
    gt_count = matrix.sum(dim=1)
    union = gt_count + matrix.sum(dim=0) - true_positive
    nan = torch.full_like(true_positive, float("nan"))
    iou = torch.where(union > 0, true_positive / union.clamp_min(1), nan)
    acc = torch.where(gt_count > 0, true_positive / gt_count.clamp_min(1), nan)
    total = float(gt_count.sum())
    present = gt_count > 0
    return RegionScores(
        iou=iou,
        acc=acc,
        miou=nanmean(iou),
        macc=nanmean(acc),
        fwiou=float((iou[present] * gt_count[present]).sum()) / total if total else float("nan"),
        pacc=float(true_positive.sum()) / total if total else float("nan"),
    )
