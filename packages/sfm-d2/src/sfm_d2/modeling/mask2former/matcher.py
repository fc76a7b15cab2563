"""Hungarian matching of predicted queries to ground-truth masks (Mask2Former's matcher).

The mask costs are estimated on random points shared by every prediction and target of an image,
so predictions at 1/4 resolution and targets at full resolution compare without resizing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from sfm_core._checks import check_positive, check_tensor
from sfm_d2.modeling.mask2former.point_sampling import point_sample


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean-over-points sigmoid BCE of every prediction ``[Q, P]`` with every target ``[n, P]``.

    Two matrix products of the per-point positive / negative terms give the ``[Q, n]`` matrix
    without materialising ``Q * n * P`` values.
    """
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="none"
    )
    total = positive @ targets.T + negative @ (1 - targets).T
    return total / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` for every pair, ``p = sigmoid(logits)``."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising ``w_class * cost_class + w_mask * BCE + w_dice * dice``."""

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
    ) -> None:
        super().__init__()
        for name, value in (
            ("cost_class", cost_class),
            ("cost_mask", cost_mask),
            ("cost_dice", cost_dice),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("cost_class, cost_mask and cost_dice cannot all be 0")
        check_positive("num_points", num_points, integer=True)
        self.cost_class = float(cost_class)
        self.cost_mask = float(cost_mask)
        self.cost_dice = float(cost_dice)
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image ``(query_indices, target_indices)``, int64, of length ``min(Q, n)``.

        ``outputs``: ``pred_logits [B, Q, K+1]`` and ``pred_masks [B, Q, h, w]`` (logits);
        ``targets``: per image ``labels`` int64 ``[n]`` and ``masks [n, H, W]``.
        """
        logits = check_tensor("outputs['pred_logits']", outputs.get("pred_logits"), ndim=3)
        masks = check_tensor("outputs['pred_masks']", outputs.get("pred_masks"), ndim=4)
        check_targets(targets, batch=logits.shape[0])
        return [self._match_image(logits[b], masks[b], target) for b, target in enumerate(targets)]

    def _match_image(
        self, logits: torch.Tensor, masks: torch.Tensor, target: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels, target_masks = target["labels"], target["masks"]
        if labels.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty.clone()
        num_queries, num_targets = masks.shape[0], labels.shape[0]
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        predicted = point_sample(masks[:, None], coords.expand(num_queries, -1, -1))[:, 0]
        sampled = point_sample(
            target_masks[:, None].to(masks.dtype), coords.expand(num_targets, -1, -1)
        )[:, 0]
        with torch.autocast(device_type=masks.device.type, enabled=False):
            predicted, sampled = predicted.float(), sampled.float()
            cost = (
                self.cost_mask * pairwise_sigmoid_ce(predicted, sampled)
                + self.cost_dice * pairwise_dice(predicted, sampled)
                - self.cost_class * logits.float().softmax(-1)[:, labels]
            )
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )


def check_targets(targets: object, *, batch: int) -> None:
    """Raise unless ``targets`` is ``batch`` dicts of int64 ``labels [n]`` and ``masks [n, H, W]``."""
    if not isinstance(targets, list | tuple) or len(targets) != batch:
        got = len(targets) if isinstance(targets, list | tuple) else type(targets).__name__
        raise ValueError(f"targets must be a list of {batch} dicts (one per image), got {got}")
    for index, target in enumerate(targets):
        if not isinstance(target, dict) or "labels" not in target or "masks" not in target:
            raise ValueError(f"targets[{index}] must be a dict with 'labels' and 'masks'")
        labels, masks = target["labels"], target["masks"]
        check_tensor(f"targets[{index}]['labels']", labels, ndim=1, floating=False)
        if labels.dtype != torch.int64:
            raise TypeError(f"targets[{index}]['labels'] must be int64, got {labels.dtype}")
        check_tensor(f"targets[{index}]['masks']", masks, ndim=3, floating=False)
        if masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"targets[{index}]: 'masks' has {masks.shape[0]} masks, 'labels' has "
                f"{labels.shape[0]}"
            )
