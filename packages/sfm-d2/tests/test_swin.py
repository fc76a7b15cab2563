"""SFM Swin: the official detection semantics (checked against timm where they coincide), shapes at
padded sizes, positions, and ARS off ⇒ the plain backbone."""

from __future__ import annotations

import math
import re

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone
from detectron2.structures import ImageList
from timm.models import swin_transformer as timm_swin
from torch import nn

from sfm_core.functional import identity_positions
from sfm_core.nn import LowPass
from sfm_d2.modeling.backbone import SFMSwinTransformer, ars_logits_key, positions_key
from sfm_d2.modeling.backbone.levels import LEVELS
from sfm_d2.modeling.backbone.swin_layers import SwinBlock, shifted_window_mask

from .backbone_checks import (
    assert_fresh_ars_is_plain_and_trained_ars_warps,
    assert_task_loss_reaches_every_ars,
    image,
    perturb_ars,
)


def tiny(cfg: CfgNode, *, ars: list[str] | None = None, window: int = 7) -> CfgNode:
    """A Swin small enough for CPU tests: dims 8/16/32/64, one or two blocks per stage."""
    cfg.MODEL.BACKBONE.NAME = "build_sfm_swin_backbone"
    cfg.MODEL.SWIN.EMBED_DIM = 8
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 2, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 2, 4]
    cfg.MODEL.SWIN.WINDOW_SIZE = window
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.SFM.ARS_STAGES = ["res3", "res4", "res5"] if ars is None else ars
    return cfg


def test_plain_swin_matches_timm_where_window_and_size_align(cfg: CfgNode) -> None:
    # At sizes whose every stage is a multiple of (and larger than) the window, timm's Swin and
    # the official one compute the same function; timm's converter maps official keys to timm.
    torch.manual_seed(0)
    ours = build_backbone(tiny(cfg, ars=[], window=2)).eval()
    reference = timm_swin.SwinTransformer(
        img_size=(128, 192), embed_dim=8, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4),
        window_size=2, num_classes=0,
    ).eval()  # fmt: skip
    official = {k: v for k, v in ours.state_dict().items() if not k.startswith("norm")}
    missing, unexpected = reference.load_state_dict(
        timm_swin.checkpoint_filter_fn(official, reference), strict=False
    )
    assert (missing, unexpected) == (["norm.weight", "norm.bias"], [])
    x = image(2, 128, 192)
    with torch.no_grad():
        got = ours(x)
        stages = reference.forward_intermediates(x, intermediates_only=True, norm=False)
    for i, (level, stage) in enumerate(zip(LEVELS, stages, strict=True)):
        want = getattr(ours, f"norm{i}")(stage.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(got[level], want, rtol=1e-5, atol=1e-5)


def test_shifted_window_attention_never_crosses_the_image_border() -> None:
    # 12 is not a multiple of the window 7: the map is padded to 14 before the roll, so content
    # rolled in from the bottom border must stay masked from the top rows.
    torch.manual_seed(0)
    block = SwinBlock(
        8, 2, window=7, shift=3, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0,
        attn_drop=0.0, drop_path=0.0,
    ).eval()  # fmt: skip
    mask = shifted_window_mask(14, 14, 7, 3, torch.device("cpu"))
    x = torch.randn(1, 12, 12, 8)
    bottom, neighbour = x.clone(), x.clone()
    bottom[:, -1] += torch.randn(12, 8)
    neighbour[:, 2] += torch.randn(12, 8)
    with torch.no_grad():
        base = block(x, mask)
        assert torch.equal(block(bottom, mask)[:, 0], base[:, 0])
        assert not torch.allclose(block(neighbour, mask)[:, 0], base[:, 0])


@pytest.mark.parametrize(("height", "width"), [(67, 93), (96, 160)])
def test_shapes_strides_and_positions(cfg: CfgNode, height: int, width: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(tiny(cfg)).eval()
    assert isinstance(model, SFMSwinTransformer)
    perturb_ars(model)
    # detectron2 pads the batch to size_divisibility (67x93 -> 96x96).
    batch = ImageList.from_tensors(
        [image(1, height, width, seed=1)[0], image(1, height - 6, width, seed=2)[0]],
        model.size_divisibility,
    ).tensor
    assert model.size_divisibility == 32
    assert batch.shape[-2] % 32 == 0
    assert batch.shape[-1] % 32 == 0
    with torch.no_grad():
        out = model(batch)
    shapes = model.output_shape()
    assert list(shapes) == list(LEVELS)
    previous = None
    for i, level in enumerate(LEVELS):
        spec = shapes[level]
        assert (spec.channels, spec.stride) == (8 * 2**i, 4 * 2**i)
        size = (math.ceil(batch.shape[-2] / spec.stride), math.ceil(batch.shape[-1] / spec.stride))
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


def test_unpadded_odd_input_is_padded_inside(cfg: CfgNode) -> None:
    model = build_backbone(tiny(cfg)).eval()
    with torch.no_grad():
        out = model(image(1, 67, 93))
    assert [tuple(out[level].shape[-2:]) for level in LEVELS] == [(17, 24), (9, 12), (5, 6), (3, 3)]


def test_ars_off_is_the_plain_backbone(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    plain = build_backbone(tiny(cfg, ars=[])).eval()
    sfm = build_backbone(tiny(cfg)).eval()
    plain_shapes = {k: v.shape for k, v in plain.state_dict().items()}
    sfm_shapes = {k: v.shape for k, v in sfm.state_dict().items() if not k.startswith("ars.")}
    assert sfm_shapes == plain_shapes
    assert {k.split(".")[1] for k in sfm.state_dict() if k.startswith("ars.")} == {
        "res3", "res4", "res5",
    }  # fmt: skip
    missing, unexpected = sfm.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == []
    assert all(k.startswith("ars.") for k in missing)
    x = image(2, 96, 160)
    assert_fresh_ars_is_plain_and_trained_ars_warps(plain, sfm, x)


def test_task_loss_reaches_every_ars(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    model = build_backbone(tiny(cfg)).train()
    assert_task_loss_reaches_every_ars(model, image(2, 64, 96))


def test_activation_checkpointing_and_ape_run(cfg: CfgNode) -> None:
    tiny(cfg)
    cfg.MODEL.SWIN.APE = True
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 64
    torch.manual_seed(0)
    model = build_backbone(cfg).train()
    cfg.MODEL.SWIN.USE_CHECKPOINT = True
    checkpointed = build_backbone(cfg).train()
    checkpointed.load_state_dict(model.state_dict())
    assert model.absolute_pos_embed is not None
    x = image(2, 64, 96)
    got, want = checkpointed(x), model(x)
    for level in LEVELS:
        torch.testing.assert_close(got[level], want[level])


def test_out_features_subset_builds_only_what_it_needs(cfg: CfgNode) -> None:
    tiny(cfg)
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3"]
    model = build_backbone(cfg).eval()
    assert len(model.layers) == 2
    assert model.layers[1].downsample is None
    assert set(model.ars) == {"res3"}
    with torch.no_grad():
        out = model(image(1, 64, 64))
    assert set(out) == {
        "res2", "res3", positions_key("res2"), positions_key("res3"), ars_logits_key("res3"),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DEPTHS", [2, 2, 6]),
        ("NUM_HEADS", [3, 6, 0, 24]),
        ("OUT_FEATURES", ["res2", "res6"]),
        ("OUT_FEATURES", []),
    ],
)
def test_bad_swin_config_names_the_key(cfg: CfgNode, key: str, value: object) -> None:
    tiny(cfg)
    cfg.MODEL.SWIN[key] = value
    with pytest.raises(ValueError, match=re.escape(f"MODEL.SWIN.{key}")):
        build_backbone(cfg)


def test_heads_must_divide_channels(cfg: CfgNode) -> None:
    tiny(cfg)
    cfg.MODEL.SWIN.NUM_HEADS = [3, 2, 2, 4]
    with pytest.raises(ValueError, match="divisible by the number of heads 3"):
        build_backbone(cfg)


def test_bad_sfm_value_fails_at_build(cfg: CfgNode) -> None:
    tiny(cfg).MODEL.SFM.WINDOW = 0
    with pytest.raises(ValueError, match=r"MODEL\.SFM\.WINDOW"):
        build_backbone(cfg)


def test_input_must_be_a_batch(cfg: CfgNode) -> None:
    model = build_backbone(tiny(cfg))
    with pytest.raises(ValueError, match=r"x must be a 4-D tensor"):
        model(torch.randn(3, 32, 32))


def test_direct_construction_needs_an_ars_factory() -> None:
    with pytest.raises(ValueError, match="make_ars is required"):
        SFMSwinTransformer(ars_stages=["res3"])


def test_group_norm_fits_narrow_ars_branches(cfg: CfgNode) -> None:
    # Swin-T widths: the pyramid branches before res3 are 96 / 4 = 24 wide, where detectron2's
    # GroupNorm(32, C) cannot be built; MODEL.SFM.NORM "GN" takes the largest group count that fits.
    tiny(cfg, ars=["res3", "res4", "res5"])
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SFM.NORM = "GN"
    backbone = build_backbone(cfg)
    norms = [m for m in backbone.ars.modules() if isinstance(m, nn.GroupNorm)]
    assert norms
    assert all(m.num_channels % m.num_groups == 0 and m.num_groups > 1 for m in norms)
    assert {m.num_channels for m in norms} >= {24}
    backbone.train()
    out = backbone(torch.randn(1, 3, 64, 64))  # batch 1 trains with GroupNorm
    assert torch.isfinite(out["res5"]).all()


def test_lowpass_stages_blur_what_enters_each_patch_merging(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    plain = build_backbone(tiny(cfg, ars=[])).eval()
    tiny(cfg, ars=[]).MODEL.SFM.LOWPASS_STAGES = ["res3", "res5"]
    blurred = build_backbone(cfg).eval()
    assert set(blurred.lowpass) == {"res3", "res5"}
    blurred.load_state_dict(plain.state_dict())  # strict: no new parameters or buffers
    entering: dict[str, list[torch.Tensor]] = {"plain": [], "blurred": []}
    for name, model in (("plain", plain), ("blurred", blurred)):
        for stage in model.layers[:3]:
            stage.downsample.register_forward_pre_hook(
                lambda _m, args, name=name: entering[name].append(args[0])
            )
    x = image(2, 64, 96)
    with torch.no_grad():
        out_plain, out_blurred = plain(x), blurred(x)
    torch.testing.assert_close(out_blurred["res2"], out_plain["res2"])  # taps before any blur
    # the first merging gets the plain map blurred; res4's merging has no blur of its own
    expected = LowPass()(entering["plain"][0].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(entering["blurred"][0], expected)
    assert not torch.allclose(out_blurred["res3"], out_plain["res3"])


def test_lowpass_is_swin_only(cfg: CfgNode) -> None:
    cfg.MODEL.SFM.LOWPASS_STAGES = ["res3"]
    cfg.MODEL.BACKBONE.NAME = "build_sfm_resnet_backbone"
    with pytest.raises(ValueError, match=r"MODEL\.SFM\.LOWPASS_STAGES"):
        build_backbone(cfg)
    tiny(cfg).MODEL.SFM.LOWPASS_STAGES = ["res2"]
    with pytest.raises(ValueError, match=r"MODEL\.SFM\.LOWPASS_STAGES"):
        build_backbone(cfg)
