"""Boundary IoU (Cheng et al., CVPR 2021) of semantic label maps, in torch alone.

For a class c, its inner boundary band of width d is the set of pixels of the class whose
chessboard distance to a pixel of another class is at most d: the mask minus its erosion by a
(2d+1) x (2d+1) square, as the paper's reference erodes with a 3x3 kernel d times. Boundary IoU
of c is |band(GT) ∩ band(pred)| / |band(GT) ∪ band(pred)|, with intersections and unions summed
over the dataset (as mIoU sums its confusion matrix), NaN where the union is empty.

Two choices differ from the reference implementation for instance masks, both so that the score
measures detail only: the image frame is not a contour (a class that touches the border gets
no free band along it), and ignored pixels are unknown: they never create a contour (erosion
treats them as inside every class) and are never counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfm_d2.evaluation.confusion import check_label_maps

_CHUNK_PIXELS = 1 << 24  # class masks handled at once: about 64 MB of float32


def _check_width(width: object) -> int:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int (pixels), got {width!r}")
    return width


def inner_boundary(
    masks: torch.Tensor, width: int, unknown: torch.Tensor | None = None
) -> torch.Tensor:
    """bool [N, H, W]: the pixels of each mask within ``width`` px (chessboard) of its contour.

    ``unknown`` (bool [H, W]) marks pixels that count as inside every mask for the erosion and
    are never part of a band. Outside the image counts as inside too.
    """
    width = _check_width(width)
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be a bool tensor [N, H, W], got {masks!r}")
    solid = masks if unknown is None else masks | unknown
    outside = (~solid).to(torch.float32).unsqueeze(1)
    # Dilating the complement erodes the mask; max_pool2d's implicit padding is never the max,
    # so pixels beyond the frame never reach in.
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1, padding=width).squeeze(1) > 0
    band = masks & near_outside
    return band if unknown is None else band & ~unknown


def boundary_statistics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    num_classes: int,
    width: int = 3,
    ignore_label: int = 255,
) -> torch.Tensor:
    """int64 [2, K]: per class, |band(GT) ∩ band(pred)| (row 0) and |band(GT) ∪ band(pred)| (row 1).

    Only classes present (outside ignored pixels) in ``pred`` or ``gt`` can have a band; the
    others get zeros. Sum these over images, then :func:`boundary_iou`.
    """
    check_label_maps(pred, gt, num_classes, ignore_label)
    width = _check_width(width)
    pred = pred.to(gt.device)
    unknown = gt == ignore_label
    known = ~unknown
    present = torch.unique(torch.cat([pred[known], gt[known]])).to(torch.int64)
    stats = torch.zeros(2, num_classes, dtype=torch.int64)
    per_chunk = max(1, _CHUNK_PIXELS // max(1, gt.numel()))
    for classes in present.split(per_chunk):
        ids = classes.view(-1, 1, 1)
        gt_band = inner_boundary(gt.unsqueeze(0) == ids, width, unknown)
        pred_band = inner_boundary(pred.unsqueeze(0) == ids, width, unknown)
        stats[0, classes.cpu()] = (gt_band & pred_band).sum(dim=(1, 2)).cpu()
        stats[1, classes.cpu()] = (gt_band | pred_band).sum(dim=(1, 2)).cpu()
    return stats


def boundary_iou(stats: torch.Tensor) -> torch.Tensor:
    """float64 [K] from summed :func:`boundary_statistics`: intersection / union, NaN if empty."""
    if not isinstance(stats, torch.Tensor) or stats.dim() != 2 or stats.shape[0] != 2:
        raise ValueError(f"stats must be a [2, K] tensor, got {stats!r}")
    intersection, union = stats.to(torch.float64)
    return torch.where(
        union > 0, intersection / union.clamp_min(1), torch.full_like(union, float("nan"))
    )
