"""``SFMMaskFormer``: Mask2Former's meta-architecture for semantic segmentation on detectron2.

Training: normalise, pad the batch to ``MASK_FORMER.SIZE_DIVISIBILITY``, backbone, head, then the
set criterion against per-class masks (zero-padded to the batch size); each loss times its weight
(``loss_ce/mask/dice`` and their ``_i`` deep-supervision copies, others dropped), plus
``loss_edge`` (METHOD.md §1, optional) from the ARS attention logits the backbone returns.

Inference (semantic only): ``Σ_q softmax(class)_q[:K] · sigmoid(mask_q)`` as the official model,
computed over chunks of queries so that at most ``inference_chunk`` full-size masks exist at once
(the official model upsamples all Q masks of the whole batch to the padded size first), then
cropped and resized to the dataset dict's ``height × width``: ``[K, height, width]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage, get_event_storage
from torch import nn

from sfm_core import ops
from sfm_core.nn import ars_diagnostics, edge_guidance_loss, label_detail
from sfm_d2.config import EDGE_TARGETS
from sfm_d2.modeling.backbone.outputs import ars_input_positions, ars_logits_key, ars_stages
from sfm_d2.modeling.mask2former.criterion import SetCriterion
from sfm_d2.modeling.mask2former.matcher import HungarianMatcher

LOSS_NAMES = ("loss_ce", "loss_mask", "loss_dice")


def loss_weights(cfg: CfgNode) -> dict[str, float]:
    """Official weight dict: CE, mask BCE and dice, with ``_0.._{DEC_LAYERS-2}`` copies when
    ``DEEP_SUPERVISION`` (one per auxiliary prediction)."""
    mf = cfg.MODEL.MASK_FORMER
    base = dict(zip(LOSS_NAMES, (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT), strict=True))
    weights = dict(base)
    if mf.DEEP_SUPERVISION:
        for i in range(mf.DEC_LAYERS - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def current_storage() -> EventStorage | None:
    """detectron2's current ``EventStorage``, None outside a trainer (a plain forward)."""
    try:
        return get_event_storage()
    except AssertionError:  # detectron2 asserts that a storage is open
        return None


@META_ARCH_REGISTRY.register()
class SFMMaskFormer(nn.Module):
    """Mask2Former (semantic segmentation) with an SFM backbone and head.

    Args:
        backbone, sem_seg_head, criterion: the three parts (criterion holds the weight dict).
        size_divisibility: batch padding multiple (the backbone's when < 0).
        pixel_mean, pixel_std: per-channel normalisation of the input images (INPUT.FORMAT).
        edge_loss_weight: weight of ``loss_edge`` (0 = off).
        ignore_value: label of ignored pixels in the batch's ``sem_seg`` (edge loss).
        postprocess_before_inference: resize masks to the output size before combining
            (``TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE``).
        inference_chunk: queries whose full-size masks are held at once at inference.
    """

    @configurable  # type: ignore[untyped-decorator]
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        edge_loss_weight: float = 0.0,
        edge_target: str = "full",
        edge_sigma: float = 2.0,
        diagnostics_period: int = 0,
        ignore_value: int = 255,
        postprocess_before_inference: bool = False,
        inference_chunk: int = 16,
    ) -> None:
        super().__init__()
        if isinstance(inference_chunk, bool) or not isinstance(inference_chunk, int):
            raise TypeError(f"inference_chunk must be an int, got {inference_chunk!r}")
        if inference_chunk < 1:
            raise ValueError(f"inference_chunk must be >= 1, got {inference_chunk}")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        if size_divisibility < 0:
            size_divisibility = int(backbone.size_divisibility)
        self.size_divisibility = size_divisibility
        self.edge_loss_weight = float(edge_loss_weight)
        if edge_target not in EDGE_TARGETS:
            raise ValueError(
                f"edge_target must be one of {list(EDGE_TARGETS)}, got {edge_target!r}"
            )
        self.edge_target = edge_target
        self.edge_sigma = float(edge_sigma)
        self.diagnostics_period = int(diagnostics_period)
        self.ignore_value = ignore_value
        self.postprocess_before_inference = postprocess_before_inference
        self.inference_chunk = inference_chunk
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        mf = cfg.MODEL.MASK_FORMER
        for key in ("INSTANCE_ON", "PANOPTIC_ON"):
            if mf.TEST[key]:
                raise ValueError(
                    f"MODEL.MASK_FORMER.TEST.{key} must be False: SFMMaskFormer does semantic "
                    "segmentation only"
                )
        if not mf.TEST.SEMANTIC_ON:
            raise ValueError("MODEL.MASK_FORMER.TEST.SEMANTIC_ON must be True (semantic only)")
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        criterion = SetCriterion(
            sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=loss_weights(cfg),
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=("labels", "masks"),
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "edge_loss_weight": cfg.MODEL.SFM.EDGE_LOSS_WEIGHT,
            "edge_target": cfg.MODEL.SFM.EDGE_TARGET,
            "edge_sigma": cfg.MODEL.SFM.EDGE_SIGMA,
            "diagnostics_period": cfg.MODEL.SFM.DIAGNOSTICS_PERIOD,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "postprocess_before_inference": mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device  # type: ignore[no-any-return]

    def forward(
        self, batched_inputs: Sequence[Mapping[str, Any]]
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Losses in training, ``[{"sem_seg": [K, height, width]}]`` otherwise."""
        if not batched_inputs:
            raise ValueError("batched_inputs must hold at least one dataset dict")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.sem_seg_head(features)
        if not self.training:
            return self.semantic_results(outputs, batched_inputs, images)
        targets = self.prepare_targets(batched_inputs, images)
        losses: dict[str, torch.Tensor] = self.criterion(outputs, targets)
        weight_dict = self.criterion.weight_dict
        losses = {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}
        if self.edge_loss_weight > 0:
            edge = self.edge_loss(features, batched_inputs, images)
            if edge is not None:
                losses["loss_edge"] = edge * self.edge_loss_weight
        self.log_ars_diagnostics(features, batched_inputs, images)
        return losses

    def preprocess_image(self, batched_inputs: Sequence[Mapping[str, Any]]) -> ImageList:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(
        self, batched_inputs: Sequence[Mapping[str, Any]], images: ImageList
    ) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"labels": [n], "masks": [n, H_pad, W_pad]}`` (masks zero-padded)."""
        height, width = images.tensor.shape[-2:]
        targets = []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise ValueError(f"batched_inputs[{i}] has no 'instances' (needed in training)")
            instances = x["instances"].to(self.device)
            masks = instances.gt_masks
            masks = getattr(masks, "tensor", masks)  # BitMasks or a plain [n, h, w] tensor
            padded = masks.new_zeros((masks.shape[0], height, width))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": instances.gt_classes, "masks": padded})
        return targets

    def edge_loss(
        self,
        features: Mapping[str, torch.Tensor],
        batched_inputs: Sequence[Mapping[str, Any]],
        images: ImageList,
    ) -> torch.Tensor | None:
        """Mean edge-guidance loss over the ARS stages that ran (None when none did).

        ``edge_target == "full"``: each stage's target comes from the full-resolution labels,
        read at the image positions of its saliency pixels (the composite positions of the
        level before the stage, which is the ARS input).
        """
        stages = ars_stages(features)
        if not stages:
            return None
        labels = self.padded_labels(batched_inputs, "MODEL.SFM.EDGE_LOSS_WEIGHT > 0")
        total = torch.zeros((), device=self.device)
        for stage in stages:
            positions = ars_input_positions(features, stage) if self.edge_target == "full" else None
            total = total + edge_guidance_loss(
                features[ars_logits_key(stage)],
                labels,
                ignore_index=self.ignore_value,
                sigma=self.edge_sigma,
                positions=positions,
            )
        return total / len(stages)

    def padded_labels(self, batched_inputs: Sequence[Mapping[str, Any]], needed_by: str) -> Any:
        """The batch's ``sem_seg`` ``[B, H_pad, W_pad]``, padded with the ignore value."""
        for i, x in enumerate(batched_inputs):
            if "sem_seg" not in x:
                raise ValueError(
                    f"batched_inputs[{i}] has no 'sem_seg', which {needed_by} needs (the "
                    "semantic dataset mapper keeps it)"
                )
        return ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.size_divisibility,
            pad_value=float(self.ignore_value),
        ).tensor

    @torch.no_grad()
    def log_ars_diagnostics(
        self,
        features: Mapping[str, torch.Tensor],
        batched_inputs: Sequence[Mapping[str, Any]],
        images: ImageList,
    ) -> None:
        """Every ``diagnostics_period`` iterations, put each ARS's diagnostics
        (:func:`sfm_core.nn.ars_diagnostics`) into the current ``EventStorage`` as
        ``ars/<stage>/<name>``; detail is :func:`sfm_core.nn.label_detail` of the full-resolution
        labels. Nothing without a storage (a plain forward) or without ARS."""
        storage = current_storage()
        period = self.diagnostics_period
        if storage is None or period <= 0 or storage.iter % period:
            return
        stages = ars_stages(features)
        if not stages or any("sem_seg" not in x for x in batched_inputs):
            return
        detail = label_detail(
            self.padded_labels(batched_inputs, "the ARS diagnostics"),
            ignore_index=self.ignore_value,
        )
        ars_modules = self.backbone.ars
        for stage in stages:
            module = ars_modules[stage]
            logits = features[ars_logits_key(stage)]
            grid = ops.saliency_grid(
                logits, window=module.window, fwhm=module.fwhm, s_min=module.s_min,
                backend=module.backend,
            )  # fmt: skip
            found = ars_diagnostics(grid, logits, detail, ars_input_positions(features, stage))
            for name, value in found.as_dict().items():
                if math.isfinite(value):
                    storage.put_scalar(f"ars/{stage}/{name}", value, smoothing_hint=False)

    def semantic_results(
        self,
        outputs: Mapping[str, torch.Tensor],
        batched_inputs: Sequence[Mapping[str, Any]],
        images: ImageList,
    ) -> list[dict[str, torch.Tensor]]:
        padded = (int(images.tensor.shape[-2]), int(images.tensor.shape[-1]))
        results = []
        for logits, masks, x, image_size in zip(
            outputs["pred_logits"], outputs["pred_masks"], batched_inputs, images.image_sizes,
            strict=True,
        ):  # fmt: skip
            height = int(x.get("height", image_size[0]))
            width = int(x.get("width", image_size[1]))
            score = self.semantic_inference(logits, masks, padded, image_size, (height, width))
            results.append({"sem_seg": score})
        return results

    def semantic_inference(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        padded_size: tuple[int, int],
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> torch.Tensor:
        """Class-weighted sum of mask probabilities ``[K, *output_size]`` for one image.

        ``logits`` ``[Q, K+1]``, ``masks`` ``[Q, h, w]`` at the stride of the mask features of
        the ``padded_size`` batch; the valid ``image_size`` part is kept. Bilinear resizing is
        linear, so summing chunks of queries gives the official result (up to rounding).
        """
        probs = F.softmax(logits, dim=-1)[..., :-1]
        height, width = output_size
        valid_h, valid_w = int(image_size[0]), int(image_size[1])
        score: torch.Tensor | None = None
        for start in range(0, masks.shape[0], self.inference_chunk):
            chunk = masks[start : start + self.inference_chunk]
            up = F.interpolate(chunk[None], size=padded_size, mode="bilinear", align_corners=False)
            up = up[0, :, :valid_h, :valid_w]
            if self.postprocess_before_inference:
                up = sem_seg_postprocess(up, (valid_h, valid_w), height, width)
            part = torch.einsum(
                "qc,qhw->chw", probs[start : start + self.inference_chunk], up.sigmoid()
            )
            score = part if score is None else score + part
        assert score is not None  # masks has at least one query
        if not self.postprocess_before_inference:
            score = sem_seg_postprocess(score, (valid_h, valid_w), height, width)
        return score
