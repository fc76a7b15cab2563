"""Mask2Former's set criterion: class cross-entropy over all queries, point-sampled BCE and dice
over the Hungarian-matched (query, ground-truth mask) pairs, repeated for every auxiliary output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sfm_core._checks import check_positive, check_tensor
from sfm_d2.modeling.mask2former.matcher import HungarianMatcher, check_targets
from sfm_d2.modeling.mask2former.point_sampling import point_sample, uncertain_point_coords

LOSS_NAMES = ("labels", "masks")


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Mean-over-points sigmoid BCE of each mask ``[M, P]``, summed over masks / ``num_masks``."""
    per_point = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_point.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` per mask ``[M, P]``, summed / ``num_masks``."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def _padded_masks(targets: list[dict[str, torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    """Every image's GT masks zero-padded to the batch's largest size, ``[B, n_max, H, W]``."""
    height = max(int(t["masks"].shape[-2]) for t in targets)
    width = max(int(t["masks"].shape[-1]) for t in targets)
    count = max(int(t["masks"].shape[0]) for t in targets)
    padded = like.new_zeros(len(targets), count, height, width)
    for index, target in enumerate(targets):
        masks = target["masks"]
        padded[index, : masks.shape[0], : masks.shape[1], : masks.shape[2]] = masks
    return padded


class SetCriterion(nn.Module):
    """Unweighted Mask2Former losses; ``weight_dict`` travels along for the caller to apply."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float,
        losses: Sequence[str] = LOSS_NAMES,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes, integer=True)
        if not callable(matcher):
            raise TypeError(f"matcher must be callable (a HungarianMatcher), got {matcher!r}")
        if not isinstance(weight_dict, dict):
            raise TypeError(
                f"weight_dict must be a dict of loss name -> weight, got {weight_dict!r}"
            )
        if isinstance(eos_coef, bool) or not isinstance(eos_coef, int | float) or eos_coef < 0:
            raise ValueError(f"eos_coef must be a number >= 0, got {eos_coef!r}")
        unknown = [name for name in losses if name not in LOSS_NAMES]
        if unknown or isinstance(losses, str):
            raise ValueError(f"losses must be a sequence drawn from {LOSS_NAMES}, got {losses!r}")
        check_positive("num_points", num_points, integer=True)
        check_positive("oversample_ratio", oversample_ratio)
        if oversample_ratio < 1:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio!r}")
        if not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(
                f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio!r}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = float(eos_coef)
        self.losses = tuple(losses)
        self.num_points = num_points
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", class_weight)

    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``loss_ce``, ``loss_mask``, ``loss_dice`` and their ``_{i}`` copies per aux output.

        ``outputs`` as returned by the decoder; ``targets``: per image int64 ``labels [n]`` and
        ``masks [n, H, W]`` (bool or float, padded pixels 0).
        """
        logits = check_tensor("outputs['pred_logits']", outputs.get("pred_logits"), ndim=3)
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"outputs['pred_logits'] must have num_classes + 1 = {self.num_classes + 1} "
                f"logits, got shape {tuple(logits.shape)}"
            )
        check_targets(targets, batch=logits.shape[0])
        num_masks = self._num_masks(targets, logits.device)
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self._losses(final, targets, num_masks)
        for index, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses(aux, targets, num_masks)
            losses.update({f"{name}_{index}": value for name, value in aux_losses.items()})
        return losses

    def _losses(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]], num_masks: float
    ) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses: dict[str, torch.Tensor] = {}
        if "labels" in self.losses:
            losses["loss_ce"] = self.loss_labels(outputs, targets, indices)
        if "masks" in self.losses:
            losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def loss_labels(
        self,
        outputs: dict[str, Any],
        targets: list[dict[str, torch.Tensor]],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Weighted cross-entropy over K+1 classes; unmatched queries target no-object (K)."""
        logits = outputs["pred_logits"].float()
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        for image, (query_idx, target_idx) in enumerate(indices):
            labels = targets[image]["labels"].to(logits.device)
            target_classes[image, query_idx.to(logits.device)] = labels[
                target_idx.to(labels.device)
            ]
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)

    def loss_masks(
        self,
        outputs: dict[str, Any],
        targets: list[dict[str, torch.Tensor]],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_masks: float,
    ) -> dict[str, torch.Tensor]:
        """Point BCE and dice of the matched pairs, on importance-sampled points."""
        pred_masks = outputs["pred_masks"]
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        target_idx = torch.cat([t for _, t in indices])
        if query_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph (and DDP) connected
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src = pred_masks[batch_idx.to(pred_masks.device), query_idx.to(pred_masks.device)][:, None]
        gt = _padded_masks(targets, src)[batch_idx.to(src.device), target_idx.to(src.device)][
            :, None
        ]
        with torch.no_grad():
            coords = uncertain_point_coords(
                src, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            gt_points = point_sample(gt, coords)[:, 0]
        src_points = point_sample(src, coords)[:, 0]
        return {
            "loss_mask": sigmoid_ce_loss(src_points, gt_points, num_masks),
            "loss_dice": dice_loss(src_points, gt_points, num_masks),
        }

    @staticmethod
    def _num_masks(targets: list[dict[str, torch.Tensor]], device: torch.device) -> float:
        """GT masks per process, averaged over all processes when distributed, at least 1."""
        count = torch.as_tensor(
            float(sum(int(t["labels"].numel()) for t in targets)), device=device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return max(float(count.item()), 1.0)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )
