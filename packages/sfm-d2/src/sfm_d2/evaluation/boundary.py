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


def _check_width(width: object) -> int:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int (pixels), got {width!r}")
    return width


def _window_max(x: torch.Tensor, width: int) -> torch.Tensor:
    """Max over the (2*width+1)^2 square around each pixel of [H, W]; beyond the frame is ignored.

    Two 1-D passes (the square is separable); max_pool2d's implicit padding never wins.
    """
    size = 2 * width + 1
    rows = F.max_pool2d(x[None, None], (1, size), stride=1, padding=(0, width))
    return F.max_pool2d(rows, (size, 1), stride=1, padding=(width, 0))[0, 0]


def boundary_band(
    labels: torch.Tensor, width: int, unknown: torch.Tensor | None = None
) -> torch.Tensor:
    """bool [H, W]: pixels within ``width`` px (chessboard) of a pixel with another label.

    Each marked pixel lies in the inner band of its own label, so ``band & (labels == c)`` is
    the band of class c: the class mask minus its erosion by the (2*width+1) square. Pixels in
    ``unknown`` (bool [H, W]) count as any label: they make no contour and are never marked.
    Computed on the label map at once (not per class): a pixel is near another label iff the
    window's maximum is above its own or the window's minimum below it.
    """
    width = _check_width(width)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer tensor [H, W], got {labels!r}")
    # float32 holds integer ids exactly up to 2**24
    dtype = (
        torch.float32 if labels.numel() == 0 or int(labels.abs().max()) < 2**24 else torch.float64
    )
    values = labels.to(dtype)
    hidden = torch.zeros_like(labels, dtype=torch.bool) if unknown is None else unknown
    higher = _window_max(values.masked_fill(hidden, float("-inf")), width) > values
    lower = _window_max((-values).masked_fill(hidden, float("-inf")), width) > -values
    return (higher | lower) & ~hidden


def boundary_statistics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    num_classes: int,
    width: int = 3,
    ignore_label: int = 255,
) -> torch.Tensor:
    """int64 [2, K]: per class, |band(GT) ∩ band(pred)| (row 0) and |band(GT) ∪ band(pred)| (row 1).

    Sum these over images, then :func:`boundary_iou`.
    """
    check_label_maps(pred, gt, num_classes, ignore_label)
    width = _check_width(width)
    pred = pred.to(gt.device)
    unknown = gt == ignore_label
    gt_band = boundary_band(gt, width, unknown)
    pred_band = boundary_band(pred, width, unknown)
    # a pixel is in both bands of class c only if both maps say c there
    both = gt_band & pred_band & (gt == pred)
    intersection = torch.bincount(gt[both], minlength=num_classes)
    union = (
        torch.bincount(gt[gt_band], minlength=num_classes)
        + torch.bincount(pred[pred_band], minlength=num_classes)
        - intersection
    )
    return torch.stack([intersection, union]).to(torch.int64).cpu()


def boundary_iou(stats: torch.Tensor) -> torch.Tensor:
    """float64 [K] from summed :func:`boundary_statistics`: intersection / union, NaN if empty."""
    if not isinstance(stats, torch.Tensor) or stats.dim() != 2 or stats.shape[0] != 2:
        raise ValueError(f"stats must be a [2, K] tensor, got {stats!r}")
    intersection, union = stats.to(torch.float64)
    return torch.where(
        union > 0, intersection / union.clamp_min(1), torch.full_like(union, float("nan"))
    )
