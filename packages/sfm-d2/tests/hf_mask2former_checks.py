"""Tiny Hugging Face Mask2Former models with every weight random, and what they compute.

Shared by the equivalence, official-checkpoint and SFM-at-init tests. Sizes are chosen so that
every Swin stage is larger than the window (the Hugging Face port shrinks the window otherwise,
the official Swin does not) and the padded batch is odd-sized: 101 x 125 → ResNet levels 26x32,
13x16, 7x8, 4x4; Swin 26x32, 13x16, 7x8, 4x4 after padding to the patch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    ResNetConfig,
    SwinConfig,
)

import sfm_d2
from sfm_d2.checkpoint import convert_hf_mask2former, load_pretrained, save_converted
from sfm_d2.hf_mask2former import as_opts, hf_config_options

TINY = Path(__file__).parent / "configs" / "tiny_mask2former.yaml"
SWITCHES = ("WARPED_POSITIONAL_ENCODING", "NONUNIFORM_UPSAMPLE", "LPRM", "WARPED_MASK_ATTENTION")
CLASSES = 5
IMAGE_SIZES = [(101, 125), (97, 119)]  # batch padded to 101 x 125 (no size divisibility)
OUTPUT_SIZES = [(101, 125), (120, 150)]  # the second image is also resized on output
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


def hf_config(backbone: str, pre_norm: bool = False) -> Mask2FormerConfig:
    """A Mask2Former as the hub's configs describe it, with widths small enough for CPU tests."""
    if backbone == "swin":
        backbone_config: Any = SwinConfig(
            embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], window_size=3,
            drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"],
        )  # fmt: skip
    elif backbone == "resnet":
        backbone_config = ResNetConfig(
            embedding_size=8, hidden_sizes=[16, 32, 64, 128], depths=[3, 4, 6, 3],
            layer_type="bottleneck", out_features=["stage1", "stage2", "stage3", "stage4"],
        )  # fmt: skip
    else:
        raise ValueError(backbone)
    return Mask2FormerConfig(
        backbone_config=backbone_config, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_layers=2, decoder_layers=5, num_attention_heads=2, dim_feedforward=48,
        num_queries=6, num_labels=CLASSES, pre_norm=pre_norm,
        id2label={i: f"class{i}" for i in range(CLASSES)},
    )  # fmt: skip


@torch.no_grad()
def randomise(model: nn.Module, seed: int, spread: float = 0.3) -> None:
    """Every parameter and running statistic random (no 0/1 init can hide a mapping error).

    Matrices ~ N(0, 1/fan_in); norm weights 1 + spread·N(0, 1); other vectors spread·N(0, 1).
    """
    gen = torch.Generator().manual_seed(seed)
    norm_weights = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, _NORMS)}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if p.dim() > 1:
            p.copy_(noise / math.sqrt(p[0].numel()))
        elif name in norm_weights:
            p.copy_(1 + spread * noise)
        else:
            p.copy_(spread * noise)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.2 * torch.randn(b.shape, generator=gen))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def hf_model(
    backbone: str, pre_norm: bool = False, seed: int = 0, spread: float = 0.3
) -> nn.Module:
    model = Mask2FormerForUniversalSegmentation(hf_config(backbone, pre_norm))
    randomise(model, seed, spread)
    return model.eval()


def our_opts(options: dict[str, Any], *, sfm: bool) -> list[str]:
    """Command-line overrides of the tiny yaml: the options the Hugging Face config implies, no
    size divisibility (odd batches), eval-friendly norms; SFM fully on or fully off."""
    opts: list[Any] = [*as_opts(options), "MODEL.MASK_FORMER.SIZE_DIVISIBILITY", 0]
    opts += ["MODEL.SWIN.DROP_PATH_RATE", 0.0, "MODEL.RESNETS.NORM", "FrozenBN"]
    opts += ["MODEL.SFM.ARS_STAGES", ["res3", "res4", "res5"] if sfm else []]
    for switch in SWITCHES:
        opts += [f"MODEL.SFM.MASK2FORMER.{switch}", sfm]
    return [str(value) for value in opts]


def our_config(options: dict[str, Any], *, sfm: bool) -> CfgNode:
    """The tiny yaml with :func:`our_opts`."""
    return sfm_d2.load_config(TINY, our_opts(options, sfm=sfm))


def hf_config_options_of(model: nn.Module) -> dict[str, Any]:
    """What :func:`hf_config_options` reads from the model's config.json."""
    return hf_config_options(model.config.to_dict())


class Converted(NamedTuple):
    path: Path  # the converted weights (.pkl, exact names)
    options: dict[str, Any]  # detectron2 config values implied by config.json


def save_and_convert(model: nn.Module, folder: Path) -> Converted:
    """``save_pretrained`` (config.json + model.safetensors), then the converter, as a user would."""
    model.save_pretrained(str(folder / "hf"))
    converted, options = convert_hf_mask2former(folder / "hf")
    path = folder / "converted.pkl"
    save_converted(converted.model, path, matching_heuristics=False)
    return Converted(path, options)


def our_model(
    converted: Converted, *, sfm: bool, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[nn.Module, Any]:
    """``SFMMaskFormer`` built for the converted weights, loaded through detectron2's
    checkpointer; returns the model (eval, ``dtype``) and the key report."""
    torch.manual_seed(seed)
    model = build_model(our_config(converted.options, sfm=sfm))
    report = load_pretrained(model, converted.path, full_model=True)
    return model.to(dtype).eval(), report


def images(seed: int = 5) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.rand(3, h, w, generator=gen) * 255, "height": oh, "width": ow}
        for (h, w), (oh, ow) in zip(IMAGE_SIZES, OUTPUT_SIZES, strict=True)
    ]


def hf_outputs(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, Any]:
    """Backbone and pixel-decoder maps, and every layer's class and mask logits."""
    with torch.no_grad():
        out = model(
            pixel_values=pixel_values, output_hidden_states=True, output_auxiliary_logits=True
        )
    layers = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in out.auxiliary_logits]
    layers.append((out.class_queries_logits, out.masks_queries_logits))
    return {
        "backbone": list(out.encoder_hidden_states),
        "mask_features": out.pixel_decoder_last_hidden_state,
        "multi_scale": list(out.pixel_decoder_hidden_states),
        "layers": layers,
    }


def our_outputs(model: nn.Module, batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The same quantities from ``SFMMaskFormer``, plus its input tensor and ``sem_seg``."""
    with torch.no_grad():
        image_list = model.preprocess_image(
            [{**x, "image": x["image"].to(model.pixel_mean.dtype)} for x in batch]
        )
        features = model.backbone(image_list.tensor)
        mask_features, _, multi_scale = model.sem_seg_head.pixel_decoder.forward_features(features)
        predictions = model.sem_seg_head(features)
        sem_seg = [r["sem_seg"] for r in model(batch)]
    layers = [(a["pred_logits"], a["pred_masks"]) for a in predictions["aux_outputs"]]
    layers.append((predictions["pred_logits"], predictions["pred_masks"]))
    return {
        "input": image_list.tensor,
        "image_sizes": list(image_list.image_sizes),
        "backbone": [features[k] for k in ("res2", "res3", "res4", "res5")],
        "mask_features": mask_features,
        "multi_scale": list(multi_scale),
        "layers": layers,
        "sem_seg": sem_seg,
    }


def official_semantic_maps(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]],
    output_sizes: Sequence[tuple[int, int]],
) -> list[torch.Tensor]:
    """Mask2Former's semantic inference written out: masks bilinearly to the padded batch size,
    softmax without the no-object class times sigmoid masks summed over queries, then cropped to
    the image and resized to the output size (detectron2's sem_seg_postprocess)."""
    masks = F.interpolate(mask_logits, size=padded, mode="bilinear", align_corners=False)
    maps = []
    for logits, mask, (h, w), size in zip(
        class_logits, masks, image_sizes, output_sizes, strict=True
    ):
        score = torch.einsum("qc,qhw->chw", logits.softmax(-1)[:, :-1], mask.sigmoid())
        score = score[:, :h, :w]
        maps.append(F.interpolate(score[None], size=size, mode="bilinear", align_corners=False)[0])
    return maps


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape, (tuple(ours.shape), tuple(reference.shape))
    return float((ours - reference).abs().max() / reference.abs().max())
