"""Every registered SFM backbone builds from a yaml with ``build_backbone(cfg)``: exact parameter
counts of the official models (ImageNet classifier removed), the ARS overhead formula, output
shapes, and a forward pass of the small variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

import sfm_d2
from sfm_d2.modeling.backbone import is_feature_key, positions_key

CONFIGS = Path(__file__).parent / "configs" / "backbones"
LEVELS = ["res2", "res3", "res4", "res5"]

# Parameters of the official ImageNet models (torchvision ResNets, microsoft Swin, facebookresearch
# ConvNeXt), the classifier (head/fc and, for Swin/ConvNeXt, the final norm) removed, plus the
# four per-level feature LayerNorms the Swin/ConvNeXt backbones add.
PLAIN = {
    "sfm_R18.yaml": 11_689_512 - (512 * 1000 + 1000),
    "sfm_R34.yaml": 21_797_672 - (512 * 1000 + 1000),
    "sfm_R50.yaml": 25_557_032 - (2048 * 1000 + 1000),
    "sfm_R50_D8.yaml": 25_557_032 - (2048 * 1000 + 1000),
    "sfm_R101.yaml": 44_549_160 - (2048 * 1000 + 1000),
    "sfm_swin_tiny.yaml": 28_288_354 - (768 * 1000 + 1000 + 2 * 768) + 2 * (96 + 192 + 384 + 768),
    "sfm_swin_small.yaml": 49_606_258 - (768 * 1000 + 1000 + 2 * 768) + 2 * (96 + 192 + 384 + 768),
    "sfm_swin_base.yaml": 87_768_224
    - (1024 * 1000 + 1000 + 2 * 1024)
    + 2 * (128 + 256 + 512 + 1024),
    "sfm_convnext_tiny.yaml": 28_589_128
    - (768 * 1000 + 1000 + 2 * 768)
    + 2 * (96 + 192 + 384 + 768),
    "sfm_convnext_small.yaml": 50_223_688
    - (768 * 1000 + 1000 + 2 * 768)
    + 2 * (96 + 192 + 384 + 768),
    "sfm_convnext_base.yaml": 88_591_464
    - (1024 * 1000 + 1000 + 2 * 1024)
    + 2 * (128 + 256 + 512 + 1024),
}
STRIDES = {"sfm_R50_D8.yaml": [4, 8, 8, 8]}
SMALL = ["sfm_R18.yaml", "sfm_R50_D8.yaml", "sfm_swin_tiny.yaml", "sfm_convnext_tiny.yaml"]


def load(name: str, ars: list[str] | None = None) -> CfgNode:
    cfg = sfm_d2.add_sfm_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / name))
    if ars is not None:
        cfg.MODEL.SFM.ARS_STAGES = ars
    return cfg


def parameters(model: torch.nn.Module, *, ars: bool) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ("ars" in n.split(".")) == ars)


def test_every_registered_sfm_backbone_has_a_yaml() -> None:
    ours = {name for name, _ in BACKBONE_REGISTRY if name.startswith("build_sfm_")}
    assert ours == {
        "build_sfm_resnet_backbone", "build_sfm_swin_backbone", "build_sfm_convnext_backbone",
    }  # fmt: skip
    covered = {load(name).MODEL.BACKBONE.NAME for name in PLAIN}
    assert covered == ours
    assert sorted(p.name for p in CONFIGS.glob("sfm_*.yaml")) == sorted(PLAIN)


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_parameters_and_shapes_from_yaml(name: str) -> None:
    # On the meta device: exact counts without allocating ~90 M parameters.
    with torch.device("meta"):
        sfm = build_backbone(load(name))
        plain = build_backbone(load(name, ars=[]))
    assert parameters(plain, ars=False) == parameters(sfm, ars=False) == PLAIN[name]
    assert parameters(plain, ars=True) == 0
    shapes = sfm.output_shape()
    assert shapes == plain.output_shape()
    assert list(shapes) == LEVELS
    assert [shapes[f].stride for f in LEVELS] == STRIDES.get(name, [4, 8, 16, 32])
    # ARS before res3, res4, res5 on the previous level's channels: C² + 13C + 1 each (SPEC §1).
    inputs = [shapes[f].channels for f in LEVELS[:3]]
    assert parameters(sfm, ars=True) == sum(c * c + 13 * c + 1 for c in inputs)


def test_ars_overhead_is_what_the_spec_says() -> None:
    # SPEC §6: ≈1.4 M parameters on ResNet-50, ≈0.2 M on the Tiny backbones.
    with torch.device("meta"):
        r50 = build_backbone(load("sfm_R50.yaml"))
        tiny = [build_backbone(load(n)) for n in ("sfm_swin_tiny.yaml", "sfm_convnext_tiny.yaml")]
    assert parameters(r50, ars=True) == pytest.approx(1.4e6, rel=0.01)
    for model in tiny:
        assert parameters(model, ars=True) == pytest.approx(0.2e6, rel=0.02)


@pytest.mark.parametrize("name", SMALL)
def test_small_backbones_run_at_an_odd_padded_size(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(load(name)).eval()
    x = torch.randn(1, 3, 64, 96)  # e.g. a 61×93 image padded to 32
    with torch.no_grad():
        out = model(x)
    features = [k for k in out if is_feature_key(k)]
    assert features == LEVELS
    for level, spec in model.output_shape().items():
        assert out[level].shape[:2] == (1, spec.channels)
        assert out[level].shape[-2:] == (64 // spec.stride, 96 // spec.stride)
        assert out[positions_key(level)].shape[-2:] == out[level].shape[-2:]
        assert torch.isfinite(out[level]).all()
