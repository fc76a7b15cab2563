"""Checkpoint conversion: fake "official" and timm ImageNet checkpoints made from random plain
backbones round-trip into the SFM backbones (ARS on) through detectron2's checkpointer.

The official layouts are written down here from the official model definitions and verified
independently: timm's own official→timm converters must load them strictly into timm's models.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone
from timm.models import convnext as timm_convnext
from timm.models import swin_transformer as timm_swin
from torch import nn

from sfm_d2.checkpoint import (
    convert_checkpoint,
    key_report,
    load_pretrained,
    read_checkpoint,
    save_converted,
)

REPO = Path(__file__).resolve().parents[3]
CONFIGS = Path(__file__).parent / "configs"
CLASSES = 7
SWIN_DEPTHS, SWIN_HEADS = [2, 2, 2, 1], [1, 2, 2, 4]
CONVNEXT_DEPTHS, CONVNEXT_DIMS = [1, 1, 2, 1], [8, 12, 20, 28]


def swin(cfg: CfgNode, ars: list[str]) -> nn.Module:
    cfg.MODEL.BACKBONE.NAME = "build_sfm_swin_backbone"
    cfg.MODEL.SWIN.EMBED_DIM = 8
    cfg.MODEL.SWIN.DEPTHS = list(SWIN_DEPTHS)
    cfg.MODEL.SWIN.NUM_HEADS = list(SWIN_HEADS)
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.SFM.ARS_STAGES = ars
    return build_backbone(cfg)


def convnext(cfg: CfgNode, ars: list[str]) -> nn.Module:
    cfg.MODEL.BACKBONE.NAME = "build_sfm_convnext_backbone"
    cfg.MODEL.CONVNEXT.DEPTHS = list(CONVNEXT_DEPTHS)
    cfg.MODEL.CONVNEXT.DIMS = list(CONVNEXT_DIMS)
    cfg.MODEL.CONVNEXT.DROP_PATH_RATE = 0.0
    cfg.MODEL.SFM.ARS_STAGES = ars
    return build_backbone(cfg)


def is_feature_norm(key: str) -> bool:
    return re.match(r"norm\d\.", key) is not None


def official_swin(plain: nn.Module) -> dict[str, torch.Tensor]:
    """microsoft/Swin-Transformer's classification layout: same block/merging names as ours
    (merging at the end of stages 0-2), persistent relative-position indices, attention masks of
    the shifted blocks, a final ``norm`` and a ``head``; no per-level feature norms."""
    gen = torch.Generator().manual_seed(1)
    state = {k: v.clone() for k, v in plain.state_dict().items() if not is_feature_norm(k)}
    for name, module in plain.named_modules():
        if name.endswith(".attn"):
            state[f"{name}.relative_position_index"] = module.relative_position_index.clone()
        if re.fullmatch(r"layers\.\d+\.blocks\.\d*[13579]", name):
            state[f"{name}.attn_mask"] = torch.zeros(4, 49, 49)
    width = 8 * 2 ** (len(SWIN_DEPTHS) - 1)
    state["norm.weight"], state["norm.bias"] = torch.rand(width, generator=gen), torch.zeros(width)
    state["head.weight"] = torch.randn(CLASSES, width, generator=gen)
    state["head.bias"] = torch.randn(CLASSES, generator=gen)
    return state


def official_convnext(plain: nn.Module) -> dict[str, torch.Tensor]:
    """facebookresearch/ConvNeXt's layout: ``downsample_layers.0`` = stem (conv, LN),
    ``downsample_layers.i`` = (LN, conv), ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}``,
    a final ``norm`` and a ``head``."""
    rules = (
        (r"^stem\.(\d+)\.", r"downsample_layers.0.\1."),
        (r"^stages\.(\d+)\.downsample\.(\d+)\.", r"downsample_layers.\1.\2."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
        (r"\.conv_dw\.", ".dwconv."),
        (r"\.mlp\.fc(\d)\.", r".pwconv\1."),
    )
    state = {}
    for key, value in plain.state_dict().items():
        if is_feature_norm(key):
            continue
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        state[key] = value.clone()
    gen = torch.Generator().manual_seed(1)
    width = CONVNEXT_DIMS[-1]
    state["norm.weight"], state["norm.bias"] = torch.rand(width, generator=gen), torch.zeros(width)
    state["head.weight"] = torch.randn(CLASSES, width, generator=gen)
    state["head.bias"] = torch.randn(CLASSES, generator=gen)
    return state


def timm_swin_model() -> nn.Module:
    return timm_swin.SwinTransformer(
        img_size=224, embed_dim=8, depths=SWIN_DEPTHS, num_heads=SWIN_HEADS, num_classes=CLASSES
    )


def timm_convnext_model() -> nn.Module:
    return timm_convnext.ConvNeXt(depths=CONVNEXT_DEPTHS, dims=CONVNEXT_DIMS, num_classes=CLASSES)


def test_fake_official_layouts_are_what_timm_calls_official(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    swin_state = official_swin(swin(cfg, []))
    assert "layers.0.downsample.reduction.weight" in swin_state
    assert not any(k.startswith("layers.3.downsample") for k in swin_state)
    model = timm_swin_model()
    model.load_state_dict(timm_swin.checkpoint_filter_fn({"model": swin_state}, model))
    torch.manual_seed(0)
    model = timm_convnext_model()
    state = official_convnext(convnext(cfg, []))
    model.load_state_dict(timm_convnext.checkpoint_filter_fn({"model": state}, model))


def assert_round_trip(plain: nn.Module, sfm: nn.Module, path: Path) -> None:
    report = load_pretrained(sfm, path)
    assert report.ok, report.format()
    assert sorted(report.new) == sorted(
        k for k in sfm.state_dict() if k.startswith("ars.") or is_feature_norm(k)
    )
    assert {k.split(".")[1] for k in report.new if k.startswith("ars.")} == {"res3", "res4", "res5"}
    loaded = sfm.state_dict()
    for key, value in plain.state_dict().items():
        if not is_feature_norm(key):
            assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_official_swin_round_trip(cfg: CfgNode, tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    plain = swin(cfg, [])
    torch.manual_seed(1)
    sfm = swin(cfg, ["res3", "res4", "res5"])
    source = tmp_path / "swin_official.pth"
    torch.save({"model": official_swin(plain)}, source)
    converted = convert_checkpoint(read_checkpoint(source), "swin")
    assert converted.source_format == "official"
    assert sorted(converted.dropped) == sorted(
        k
        for k in official_swin(plain)
        if k.startswith(("head.", "norm.")) or k.endswith(("relative_position_index", "attn_mask"))
    )
    save_converted(converted.model, tmp_path / f"swin{suffix}")
    assert_round_trip(plain, sfm, tmp_path / f"swin{suffix}")


def test_timm_swin_round_trip(cfg: CfgNode, tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = swin(cfg, [])
    reference = timm_swin_model()
    reference.load_state_dict(
        timm_swin.checkpoint_filter_fn({"model": official_swin(plain)}, reference)
    )
    converted = convert_checkpoint(reference.state_dict(), "swin")
    assert converted.source_format == "timm"
    save_converted(converted.model, tmp_path / "swin.pkl")
    torch.manual_seed(1)
    assert_round_trip(plain, swin(cfg, ["res3", "res4", "res5"]), tmp_path / "swin.pkl")


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_convnext_round_trip(cfg: CfgNode, tmp_path: Path, layout: str) -> None:
    torch.manual_seed(0)
    plain = convnext(cfg, [])
    state = official_convnext(plain)
    if layout == "timm":
        reference = timm_convnext_model()
        reference.load_state_dict(timm_convnext.checkpoint_filter_fn({"model": state}, reference))
        state = reference.state_dict()
    converted = convert_checkpoint({"model": state}, "convnext")
    assert converted.source_format == layout
    classifier = {"head", "norm"} if layout == "official" else {"head"}  # timm: head.norm
    assert {k.split(".")[0] for k in converted.dropped} == classifier
    save_converted(converted.model, tmp_path / "convnext.pth")
    torch.manual_seed(1)
    assert_round_trip(plain, convnext(cfg, ["res3", "res4", "res5"]), tmp_path / "convnext.pth")


def test_converted_file_loads_into_a_model_holding_the_backbone(
    cfg: CfgNode, tmp_path: Path
) -> None:
    # detectron2's suffix matching finds the backbone's keys under any prefix.
    torch.manual_seed(0)
    plain = convnext(cfg, [])
    save_converted(
        convert_checkpoint(official_convnext(plain), "convnext").model, tmp_path / "c.pkl"
    )
    torch.manual_seed(1)
    model = nn.ModuleDict({"backbone": convnext(cfg, ["res4"]), "head": nn.Conv2d(28, 3, 1)})
    report = load_pretrained(model, tmp_path / "c.pkl")
    assert sorted(report.missing) == ["head.bias", "head.weight"]  # not part of the backbone
    assert report.unexpected == report.mismatched == []
    assert {k.split(".")[1] for k in report.new} == {"ars", "norm0", "norm1", "norm2", "norm3"}
    assert torch.equal(
        model["backbone"].stem[0].weight,
        plain.stem[0].weight,  # type: ignore[index]
    )


def test_detectron2_checkpoint_round_trip_keeps_ars(cfg: CfgNode, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = swin(cfg, ["res3", "res5"])
    with torch.no_grad():
        for p in trained.ars.parameters():
            p.add_(torch.randn_like(p))
    DetectionCheckpointer(trained, save_dir=str(tmp_path)).save("model_final")
    torch.manual_seed(1)
    fresh = swin(cfg, ["res3", "res5"])
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_key_report_names_every_problem(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    plain = swin(cfg, [])
    model = convert_checkpoint(official_swin(plain), "swin").model
    del model["layers.1.blocks.0.mlp.fc1.bias"]
    model["layers.0.blocks.0.norm1.weight"] = torch.ones(3)
    model["decoder.extra.weight"] = torch.ones(2)
    report = key_report(swin(cfg, ["res3"]), model)
    assert not report.ok
    assert report.missing == ["layers.1.blocks.0.mlp.fc1.bias"]
    assert report.mismatched == ["layers.0.blocks.0.norm1.weight"]
    assert report.unexpected == ["decoder.extra.weight"]
    text = report.format()
    assert "MISSING: layers.1.blocks.0.mlp.fc1.bias" in text
    assert "new: ars.res3.* (" in text


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch must be one of"):
        convert_checkpoint({"w": torch.ones(1)}, "vit")
    with pytest.raises(ValueError, match="holds no tensors"):
        convert_checkpoint({"model": {"epoch": 3}}, "swin")
    with pytest.raises(ValueError, match="ConvNeXt V2"):
        convert_checkpoint({"stages.0.0.grn.gamma": torch.ones(1, 1, 1, 8)}, "convnext")
    with pytest.raises(ValueError, match=r"must end in \.pth or \.pkl"):
        save_converted({"w": torch.ones(1)}, tmp_path / "w.bin")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {"w": torch.ones(1)}, "config": Path("x")}, unsafe)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_checkpoint(unsafe)
    assert not list(tmp_path.glob(".w.bin*"))


def test_command_line_converts_and_checks(cfg: CfgNode, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tmp_path / "official.pth"
    torch.save({"model": official_swin(swin(cfg, []))}, source)
    output = tmp_path / "converted.pkl"
    command = [
        sys.executable, str(REPO / "tools" / "convert_pretrained.py"), "swin", str(source),
        str(output), "--config-file", str(CONFIGS / "tiny_swin.yaml"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read" in result.stdout
    assert "the official swin layout" in result.stdout
    assert "new: ars.res3.*" in result.stdout
    with output.open("rb") as file:
        payload = pickle.load(file)
    assert payload["matching_heuristics"] is True
    # A config the checkpoint does not fit: the check fails with status 1.
    bad = subprocess.run(
        [*command, "--opts", "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.NUM_HEADS", "[2, 2, 2, 4]"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "SHAPE MISMATCH" in bad.stdout
