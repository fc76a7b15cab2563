"""Mask2Former's official semantic yamls (recreated under configs/mask2former_official) load with
``sfm_d2.load_config`` and build once the registered names are ours; the ADE20K models have the
paper's size (≈44 M parameters with R50, ≈47 M with Swin-T) with SFM off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

import sfm_d2
from sfm_d2.modeling.mask2former import SFMMaskFormer

OFFICIAL = Path(__file__).parent / "configs" / "mask2former_official"
ADE_R50 = "ade20k/maskformer2_R50_bs16_160k.yaml"
ADE_SWIN_T = "ade20k/swin/maskformer2_swin_tiny_bs16_160k.yaml"
YAMLS = [
    ADE_R50,
    ADE_SWIN_T,
    "cityscapes/maskformer2_R50_bs16_90k.yaml",
    "cityscapes/swin/maskformer2_swin_tiny_bs16_90k.yaml",
]
# The official registered names -> ours (the mapping the README documents).
BACKBONES = {
    "build_resnet_backbone": "build_sfm_resnet_backbone",
    "D2SwinTransformer": "build_sfm_swin_backbone",
}
SWITCHES = ("WARPED_POSITIONAL_ENCODING", "NONUNIFORM_UPSAMPLE", "LPRM", "WARPED_MASK_ATTENTION")
# The Mask2Former paper's parameter counts for ADE20K (R50 44 M, Swin-T 47 M).
PAPER_PARAMS = {ADE_R50: 44e6, ADE_SWIN_T: 47e6}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sfm_overrides(cfg: CfgNode) -> list[Any]:
    """The only keys a user changes: the four registered names and the backbone's."""
    return [
        "MODEL.META_ARCHITECTURE", "SFMMaskFormer",
        "MODEL.SEM_SEG_HEAD.NAME", "SFMMaskFormerHead",
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "SFMMSDeformAttnPixelDecoder",
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "SFMMultiScaleMaskedTransformerDecoder",
        "MODEL.BACKBONE.NAME", BACKBONES[cfg.MODEL.BACKBONE.NAME],
    ]  # fmt: skip


def official_model(name: str, *, sfm: bool) -> SFMMaskFormer:
    """Build on the CPU (MODEL.DEVICE is where to run, not part of the model's definition)."""
    path = OFFICIAL / name
    opts = [*sfm_overrides(sfm_d2.load_config(path)), "MODEL.DEVICE", "cpu"]
    if not sfm:
        opts += ["MODEL.SFM.ARS_STAGES", []]
        opts += [x for s in SWITCHES for x in (f"MODEL.SFM.MASK2FORMER.{s}", False)]
    model = build_model(sfm_d2.load_config(path, opts))
    assert isinstance(model, SFMMaskFormer)
    return model


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", YAMLS)
def test_official_yaml_loads_with_its_base_and_eval_tag(name: str) -> None:
    cfg = sfm_d2.load_config(OFFICIAL / name)
    assert cfg.MODEL.META_ARCHITECTURE == "MaskFormer"
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder"
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS == 6
    crop = 512 if name.startswith("ade20k") else 1024
    # 0.5 ... 2.0 x the crop size, in tenths: the !!python/object/apply:eval list
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [int(x * 0.1 * crop) for x in range(5, 21)]
    classes, iters = (150, 160000) if name.startswith("ade20k") else (19, 90000)
    assert classes == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert iters == cfg.SOLVER.MAX_ITER


@pytest.mark.parametrize("name", YAMLS)
def test_official_yaml_builds_with_our_names(name: str) -> None:
    model = official_model(name, sfm=True)
    head = model.sem_seg_head
    assert head.num_classes == (150 if name.startswith("ade20k") else 19)
    assert head.predictor.num_queries == 100
    assert len(head.pixel_decoder.transformer.encoder["layers"]) == 6
    assert sorted(model.backbone.ars) == ["res3", "res4", "res5"]
    assert model.size_divisibility == 32


@pytest.mark.parametrize("name", [ADE_R50, ADE_SWIN_T])
def test_ade20k_parameter_count_matches_the_paper(name: str) -> None:
    plain = params(official_model(name, sfm=False))
    assert abs(plain - PAPER_PARAMS[name]) <= 0.01 * PAPER_PARAMS[name], plain
    with_sfm = params(official_model(name, sfm=True))
    increase = with_sfm - plain
    print(
        f"{name}: {plain / 1e6:.2f} M plain, +{increase / 1e6:.3f} M with SFM ({increase / plain:.2%})"
    )
    assert 0 < increase < 0.05 * plain
