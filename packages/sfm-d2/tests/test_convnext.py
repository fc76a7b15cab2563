"""SFM ConvNeXt: the plain path against timm's own ConvNeXt, shapes at padded sizes, positions,
and ARS off ⇒ the plain backbone."""

from __future__ import annotations

import re

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone
from detectron2.structures import ImageList
from timm.models.convnext import ConvNeXt

from sfm_core.functional import identity_positions
from sfm_d2.modeling.backbone import SFMConvNeXt, ars_logits_key, positions_key
from sfm_d2.modeling.backbone.levels import LEVELS

from .backbone_checks import (
    assert_fresh_ars_is_plain_and_trained_ars_warps,
    assert_task_loss_reaches_every_ars,
    image,
    perturb_ars,
)

DIMS = [8, 12, 20, 28]  # not powers of two, on purpose


def tiny(cfg: CfgNode, *, ars: list[str] | None = None) -> CfgNode:
    cfg.MODEL.BACKBONE.NAME = "build_sfm_convnext_backbone"
    cfg.MODEL.CONVNEXT.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.CONVNEXT.DIMS = list(DIMS)
    cfg.MODEL.CONVNEXT.DROP_PATH_RATE = 0.0
    cfg.MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE = 0.5  # visible in the outputs (1e-6 is not)
    cfg.MODEL.SFM.ARS_STAGES = ["res3", "res4", "res5"] if ars is None else ars
    return cfg


def test_plain_convnext_matches_timm(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    ours = build_backbone(tiny(cfg, ars=[])).eval()
    reference = ConvNeXt(
        depths=(1, 1, 2, 1), dims=tuple(DIMS), ls_init_value=0.5, num_classes=0
    ).eval()
    body = {k: v for k, v in ours.state_dict().items() if not re.match(r"norm\d\.", k)}
    missing, unexpected = reference.load_state_dict(body, strict=False)
    assert unexpected == []
    assert all(k.startswith("head.") for k in missing)
    x = image(2, 96, 160)
    with torch.no_grad():
        got = ours(x)
        stages = reference.forward_intermediates(x, intermediates_only=True)
    for i, (level, stage) in enumerate(zip(LEVELS, stages, strict=True)):
        want = getattr(ours, f"norm{i}")(stage)
        torch.testing.assert_close(got[level], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(67, 93), (96, 160)])
def test_shapes_strides_and_positions(cfg: CfgNode, height: int, width: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(tiny(cfg)).eval()
    assert isinstance(model, SFMConvNeXt)
    perturb_ars(model)
    batch = ImageList.from_tensors(
        [image(1, height, width, seed=1)[0], image(1, height, width - 10, seed=2)[0]],
        model.size_divisibility,
    ).tensor
    assert model.size_divisibility == 32
    with torch.no_grad():
        out = model(batch)
    shapes = model.output_shape()
    assert list(shapes) == list(LEVELS)
    previous = None
    for i, level in enumerate(LEVELS):
        spec = shapes[level]
        assert (spec.channels, spec.stride) == (DIMS[i], 4 * 2**i)
        size = (batch.shape[-2] // spec.stride, batch.shape[-1] // spec.stride)
        assert out[level].shape == (2, spec.channels, *size)
        positions = out[positions_key(level)]
        assert positions.shape == (2, 2, *size)
        assert not positions.requires_grad
        assert positions.min() > 0
        assert positions.max() < 1
        if i == 0:
            assert ars_logits_key(level) not in out
            assert torch.equal(positions, identity_positions(2, *size))
        else:
            assert out[ars_logits_key(level)].shape == (2, 1, *previous)
            assert not torch.allclose(positions, identity_positions(2, *size), atol=1e-3)
        previous = size


def test_ars_off_is_the_plain_backbone(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    plain = build_backbone(tiny(cfg, ars=[])).eval()
    sfm = build_backbone(tiny(cfg)).eval()
    plain_shapes = {k: v.shape for k, v in plain.state_dict().items()}
    sfm_shapes = {k: v.shape for k, v in sfm.state_dict().items() if not k.startswith("ars.")}
    assert sfm_shapes == plain_shapes
    missing, unexpected = sfm.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == []
    assert {k.split(".")[1] for k in missing} == {"res3", "res4", "res5"}
    assert all(k.startswith("ars.") for k in missing)
    x = image(1, 96, 128)
    assert_fresh_ars_is_plain_and_trained_ars_warps(plain, sfm, x)


def test_task_loss_reaches_every_ars(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    model = build_backbone(tiny(cfg)).train()
    assert_task_loss_reaches_every_ars(model, image(2, 64, 96))


def test_layer_scale_off_has_no_gamma(cfg: CfgNode) -> None:
    tiny(cfg).MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE = 0.0
    model = build_backbone(cfg)
    assert not any(k.endswith("gamma") for k in model.state_dict())


def test_out_features_subset_builds_only_what_it_needs(cfg: CfgNode) -> None:
    tiny(cfg).MODEL.CONVNEXT.OUT_FEATURES = ["res3"]
    model = build_backbone(cfg).eval()
    assert len(model.stages) == 2
    assert set(model.ars) == {"res3"}
    assert not hasattr(model, "norm0")
    with torch.no_grad():
        out = model(image(1, 64, 64))
    assert set(out) == {"res3", positions_key("res3"), ars_logits_key("res3")}


@pytest.mark.parametrize(
    ("key", "value"),
    [("DEPTHS", [3, 3, 9]), ("DIMS", [96, 192, 384, -768]), ("OUT_FEATURES", ["res1"])],
)
def test_bad_convnext_config_names_the_key(cfg: CfgNode, key: str, value: object) -> None:
    tiny(cfg)
    cfg.MODEL.CONVNEXT[key] = value
    with pytest.raises(ValueError, match=re.escape(f"MODEL.CONVNEXT.{key}")):
        build_backbone(cfg)


def test_bad_sfm_value_fails_at_build(cfg: CfgNode) -> None:
    tiny(cfg).MODEL.SFM.ARS_STAGES = ["res2"]
    with pytest.raises(ValueError, match=r"MODEL\.SFM\.ARS_STAGES"):
        build_backbone(cfg)
