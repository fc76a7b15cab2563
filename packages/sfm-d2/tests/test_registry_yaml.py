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


def backbone_only(total: int, widths: list[int], *, classifier_norm: bool = True) -> int:
    """An official ImageNet model's parameter count without its 1000-class classifier (and the
    final norm before it), plus the per-level feature LayerNorms of the Swin/ConvNeXt backbones."""
    last = widths[-1]
    removed = last * 1000 + 1000 + (2 * last if classifier_norm else 0)
    added = 2 * sum(widths) if classifier_norm else 0
    return total - removed + added


TINY, BASE = [96, 192, 384, 768], [128, 256, 512, 1024]
# Totals of the official models: torchvision ResNets (no final norm, no feature norms), microsoft
# Swin, facebookresearch ConvNeXt.
PLAIN = {
    "sfm_R18.yaml": backbone_only(11_689_512, [512], classifier_norm=False),
    "sfm_R34.yaml": backbone_only(21_797_672, [512], classifier_norm=False),
    "sfm_R50.yaml": backbone_only(25_557_032, [2048], classifier_norm=False),
    "sfm_R50_D8.yaml": backbone_only(25_557_032, [2048], classifier_norm=False),
    "sfm_R101.yaml": backbone_only(44_549_160, [2048], classifier_norm=False),
    "sfm_swin_tiny.yaml": backbone_only(28_288_354, TINY),
    "sfm_swin_small.yaml": backbone_only(49_606_258, TINY),
    "sfm_swin_base.yaml": backbone_only(87_768_224, BASE),
    "sfm_convnext_tiny.yaml": backbone_only(28_589_128, TINY),
    "sfm_convnext_small.yaml": backbone_only(50_223_688, TINY),
    "sfm_convnext_base.yaml": backbone_only(88_591_464, BASE),
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
    # ARS before res3, res4, res5 on the previous level's channels: C² + 13C + 1 each (METHOD.md §1).
    inputs = [shapes[f].channels for f in LEVELS[:3]]
    assert parameters(sfm, ars=True) == sum(c * c + 13 * c + 1 for c in inputs)


def test_ars_overhead_is_what_the_spec_says() -> None:
    # METHOD.md §6: ≈1.4 M parameters on ResNet-50, ≈0.2 M on the Tiny backbones.
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
