"""SFM ResNet against detectron2's own ResNet builders (the plain backbone is ground truth)."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import (
    BottleneckBlock,
    DeformBottleneckBlock,
    build_resnet_backbone,
)
from detectron2.projects.deeplab import build_resnet_deeplab_backbone
from torch import nn

from sfm_core.nn import ConvAttention, PyramidAttention
from sfm_d2.modeling.backbone import ars_logits_key, is_feature_key, positions_key
from sfm_d2.modeling.backbone.resnet import SFMResNet

from .backbone_checks import image, perturb_ars

LEVELS = ["res2", "res3", "res4", "res5"]
IMAGE = ShapeSpec(channels=3)


def configure(cfg: CfgNode, depth: int = 50, ars: list[str] | None = None) -> CfgNode:
    cfg.MODEL.BACKBONE.NAME = "build_sfm_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = list(LEVELS)
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.SFM.ARS_STAGES = ["res3", "res4", "res5"] if ars is None else ars
    return cfg


def features(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in out.items() if is_feature_key(k)}


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_ars_off_is_the_plain_resnet(cfg: CfgNode, depth: int) -> None:
    configure(cfg, depth, ars=[])
    torch.manual_seed(0)
    sfm = build_backbone(cfg).eval()
    plain = build_resnet_backbone(cfg, IMAGE).eval()
    assert isinstance(sfm, SFMResNet)
    assert {k: v.shape for k, v in sfm.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    plain.load_state_dict(sfm.state_dict())
    assert sfm.output_shape() == plain.output_shape()
    assert sfm.size_divisibility == plain.size_divisibility == 0
    x = image(batch=1)
    with torch.no_grad():
        got, want = sfm(x), plain(x)
    assert features(got).keys() == want.keys() == set(LEVELS)
    for level in LEVELS:
        assert torch.equal(got[level], want[level]), level
        assert torch.equal(got[positions_key(level)], identity_like(want[level]))
    assert not any(k.endswith("_ars_logits") for k in got)


def identity_like(x: torch.Tensor) -> torch.Tensor:
    from sfm_core.functional import identity_positions

    return identity_positions(x.shape[0], x.shape[2], x.shape[3], dtype=torch.float32)


@pytest.mark.parametrize("depth", [18, 50])
def test_fresh_ars_keeps_plain_outputs(cfg: CfgNode, depth: int) -> None:
    configure(cfg, depth)
    torch.manual_seed(0)
    sfm = build_backbone(cfg).eval()
    plain = build_resnet_backbone(cfg, IMAGE).eval()
    missing, unexpected = plain.load_state_dict(sfm.state_dict(), strict=False)
    assert missing == []
    assert all(k.startswith("ars.") for k in unexpected)
    x = image()
    with torch.no_grad():
        got, want = sfm(x), plain(x)
    for level in LEVELS:
        torch.testing.assert_close(got[level], want[level], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("height", "width"), [(67, 93), (64, 64), (33, 97), (129, 31)])
def test_shapes_and_strides_match_plain(cfg: CfgNode, height: int, width: int) -> None:
    configure(cfg, 18)
    sfm = build_backbone(cfg).eval()
    plain = build_resnet_backbone(cfg, IMAGE).eval()
    assert sfm.output_shape() == plain.output_shape()
    assert [sfm.output_shape()[k].stride for k in LEVELS] == [4, 8, 16, 32]
    x = image(1, height, width)
    with torch.no_grad():
        got, want = sfm(x), plain(x)
    for level in LEVELS:
        assert got[level].shape == want[level].shape
        h, w = want[level].shape[-2:]
        assert got[positions_key(level)].shape == (1, 2, h, w)
    for stage, before in zip(["res3", "res4", "res5"], LEVELS, strict=False):
        assert got[ars_logits_key(stage)].shape == (1, 1, *want[before].shape[-2:])


def test_ars_parameters_are_named_and_counted(cfg: CfgNode) -> None:
    configure(cfg, 50)
    sfm = build_backbone(cfg)
    plain = build_resnet_backbone(cfg, IMAGE)
    plain_names = {n for n, _ in plain.named_parameters()}
    ars = {n: p.numel() for n, p in sfm.named_parameters() if n not in plain_names}
    assert all(n.startswith(("ars.res3.", "ars.res4.", "ars.res5.")) for n in ars)
    assert {n.split(".")[1] for n in ars} == {"res3", "res4", "res5"}
    # METHOD.md §1: about C² + 13C per module; R50's stages take 256, 512, 1024 channels.
    expected = sum(c * c + 13 * c for c in (256, 512, 1024))
    assert abs(sum(ars.values()) - expected) <= 16
    assert 1.3e6 < sum(ars.values()) < 1.5e6


def test_positions_identity_before_first_ars_then_warped(cfg: CfgNode) -> None:
    configure(cfg, 18, ars=["res4", "res5"])
    sfm = build_backbone(cfg).eval()
    perturb_ars(sfm)
    with torch.no_grad():
        out = sfm(image(2, 67, 93))
    for level in ("res2", "res3"):
        assert torch.equal(out[positions_key(level)], identity_like(out[level]))
    assert {k for k in out if k.endswith("_ars_logits")} == {
        "res4_ars_logits",
        "res5_ars_logits",
    }
    for level in ("res4", "res5"):
        pos = out[positions_key(level)]
        assert not pos.requires_grad
        assert pos.dtype == torch.float32
        assert bool(((pos > 0) & (pos < 1)).all())
        # The map never folds: x non-decreasing along rows, y along columns.
        assert bool((pos[:, 0, :, 1:] >= pos[:, 0, :, :-1] - 1e-6).all())
        assert bool((pos[:, 1, 1:, :] >= pos[:, 1, :-1, :] - 1e-6).all())
        assert not torch.allclose(pos, identity_like(out[level]), atol=1e-3), "ARS did not warp"


def test_gradients_reach_every_ars_parameter(cfg: CfgNode) -> None:
    configure(cfg, 18)
    sfm = build_backbone(cfg).train()
    perturb_ars(sfm)
    out = sfm(image(2, 45, 61))
    loss = sum((out[level] * torch.randn_like(out[level])).sum() for level in LEVELS)
    loss.backward()
    for name, p in sfm.named_parameters():
        if name.startswith("ars."):
            assert p.grad is not None, name
            # The saliency exp(A - max A) ignores a constant added to the logits: the last
            # conv's bias gets a zero gradient up to rounding (only the s_min clamp sees it).
            if not name.endswith("project.bias"):
                assert bool(p.grad.abs().sum() > 0), name


def test_fresh_ars_gets_gradient_at_its_zero_initialised_output(cfg: CfgNode) -> None:
    configure(cfg, 18, ars=["res3"])
    sfm = build_backbone(cfg).train()
    out = sfm(image(2, 45, 61))
    out["res5"].square().mean().backward()
    grads = [p.grad for n, p in sfm.named_parameters() if n.startswith("ars.res3.")]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_dilated_d16_is_plain_with_ars_off(cfg: CfgNode) -> None:
    configure(cfg, 50, ars=[])
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    torch.manual_seed(0)
    sfm = build_backbone(cfg).eval()
    plain = build_resnet_backbone(cfg, IMAGE).eval()
    plain.load_state_dict(sfm.state_dict())
    x = image(1, 41, 53)
    with torch.no_grad():
        got, want = sfm(x), plain(x)
    assert [sfm.output_shape()[k].stride for k in LEVELS] == [4, 8, 16, 16]
    for level in LEVELS:
        assert torch.equal(got[level], want[level])


@pytest.mark.parametrize("multi_grid", [[1, 1, 1], [1, 2, 4]])
def test_dilated_d8_matches_deeplab_with_ars_off(cfg: CfgNode, multi_grid: list[int]) -> None:
    configure(cfg, 50, ars=[])
    cfg.MODEL.RESNETS.RES4_DILATION = 2
    cfg.MODEL.RESNETS.RES5_DILATION = 4
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = multi_grid
    torch.manual_seed(0)
    sfm = build_backbone(cfg).eval()
    deeplab = build_resnet_deeplab_backbone(cfg, IMAGE).eval()
    deeplab.load_state_dict(sfm.state_dict())
    x = image(1, 41, 53)
    with torch.no_grad():
        got, want = sfm(x), deeplab(x)
    assert [sfm.output_shape()[k].stride for k in LEVELS] == [4, 8, 8, 8]
    for level in LEVELS:
        assert torch.equal(got[level], want[level])


def test_dilated_stages_keep_ars_and_position_size(cfg: CfgNode) -> None:
    configure(cfg, 50)
    cfg.MODEL.RESNETS.RES4_DILATION = 2
    cfg.MODEL.RESNETS.RES5_DILATION = 4
    sfm = build_backbone(cfg).eval()
    assert set(sfm.ars) == {"res3", "res4", "res5"}
    perturb_ars(sfm)
    with torch.no_grad():
        out = sfm(image(2, 41, 53))
    size = out["res3"].shape[-2:]
    for level in ("res3", "res4", "res5"):
        assert out[level].shape[-2:] == size
        assert out[positions_key(level)].shape[-2:] == size
    for stage in ("res4", "res5"):  # their ARS runs on the (dilated, same-size) res3/res4 output
        assert out[ars_logits_key(stage)].shape[-2:] == size
    assert not torch.equal(out[positions_key("res4")], out[positions_key("res5")])


def test_freeze_at_leaves_ars_trainable(cfg: CfgNode) -> None:
    configure(cfg, 18)
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    sfm = build_backbone(cfg)
    for name, p in sfm.named_parameters():
        assert p.requires_grad == name.startswith("ars."), name


def test_out_features_subset_builds_only_needed_ars(cfg: CfgNode) -> None:
    configure(cfg, 18)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3"]
    sfm = build_backbone(cfg).eval()
    assert set(sfm.ars) == {"res3"}
    with torch.no_grad():
        out = sfm(image(2, 33, 35))
    assert set(features(out)) == {"res2", "res3"}


def test_ars_config_reaches_the_modules(cfg: CfgNode) -> None:
    configure(cfg, 18, ars=["res5"])
    cfg.MODEL.SFM.WINDOW = 3
    cfg.MODEL.SFM.FWHM = 2.0
    cfg.MODEL.SFM.S_MIN = 0.01
    cfg.MODEL.SFM.GENERATOR = "conv"
    ars = build_backbone(cfg).ars["res5"]
    assert (ars.window, ars.fwhm, ars.s_min, ars.channels) == (3, 2.0, 0.01, 256)
    assert isinstance(ars.generator, ConvAttention)


@pytest.mark.parametrize(("norm", "kind"), [("BN", nn.BatchNorm2d), ("GN", nn.GroupNorm)])
def test_ars_norm_comes_from_the_config(cfg: CfgNode, norm: str, kind: type[nn.Module]) -> None:
    configure(cfg, 50, ars=["res4"])
    cfg.MODEL.SFM.NORM = norm
    generator = build_backbone(cfg).ars["res4"].generator
    assert isinstance(generator, PyramidAttention)
    norms = [m for m in generator.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert norms
    assert all(isinstance(m, kind) for m in norms)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DEPTH", 42, "MODEL.RESNETS.DEPTH must be one of"),
        ("STEM_TYPE", "deeplab", "MODEL.RESNETS.STEM_TYPE must be 'basic'"),
        ("RES4_DILATION", 4, "MODEL.RESNETS.RES4_DILATION must be 1 or 2"),
        ("RES5_DILATION", 3, "MODEL.RESNETS.RES5_DILATION must be 1, 2 or 4"),
        ("RES5_MULTI_GRID", [1, 2], "MODEL.RESNETS.RES5_MULTI_GRID must be"),
    ],
)
def test_refuses_bad_resnet_values(cfg: CfgNode, key: str, value: object, message: str) -> None:
    configure(cfg, 50)
    cfg.MODEL.RESNETS[key] = value
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg)


def test_d8_needs_res5_dilation_4(cfg: CfgNode) -> None:
    configure(cfg, 50)
    cfg.MODEL.RESNETS.RES4_DILATION = 2
    with pytest.raises(ValueError, match=r"MODEL\.RESNETS\.RES5_DILATION must be 4 when"):
        build_backbone(cfg)


def test_basic_block_resnets_refuse_dilation(cfg: CfgNode) -> None:
    configure(cfg, 34)
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    with pytest.raises(ValueError, match=r"MODEL\.RESNETS\.RES5_DILATION must be 1 for R34"):
        build_backbone(cfg)


def test_refuses_bad_sfm_values(cfg: CfgNode) -> None:
    configure(cfg, 18)
    cfg.MODEL.SFM.WINDOW = 0
    with pytest.raises(ValueError, match=r"MODEL\.SFM\.WINDOW"):
        build_backbone(cfg)


def test_refuses_non_image_input(cfg: CfgNode) -> None:
    sfm = build_backbone(configure(cfg, 18))
    with pytest.raises(ValueError, match=r"x must be an image batch \[N, C, H, W\]"):
        sfm(torch.randn(3, 32, 32))


def test_refuses_ars_for_a_stage_it_does_not_have(cfg: CfgNode) -> None:
    sfm = build_backbone(configure(cfg, 18, ars=[]))
    with pytest.raises(ValueError, match=r"ars has modules for \['res2'\]"):
        SFMResNet(
            sfm.stem,
            [list(s) for s in sfm.stages],
            out_features=LEVELS,
            ars={"res2": nn.Identity()},
        )


def test_deformable_stages_match_plain_with_ars_off(cfg: CfgNode) -> None:
    configure(cfg, 50, ars=[])
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, True, True]
    # detectron2 runs the plain deformable conv on CPU (torchvision), not the modulated one.
    cfg.MODEL.RESNETS.DEFORM_MODULATED = False
    torch.manual_seed(0)
    sfm = build_backbone(cfg).eval()
    plain = build_resnet_backbone(cfg, IMAGE).eval()
    assert [type(b) for b in sfm.res4] == [DeformBottleneckBlock] * 6
    assert type(sfm.res3[0]) is BottleneckBlock
    plain.load_state_dict(sfm.state_dict())
    x = image(1, 37, 45)
    with torch.no_grad():
        got, want = sfm(x), plain(x)
    for level in LEVELS:
        assert torch.equal(got[level], want[level])
