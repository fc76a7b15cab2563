"""Our Mask2Former is Hugging Face transformers' Mask2Former, weight for weight (float64, eval).

Hugging Face's port reproduces the official model zoo's numbers, and is an implementation this
project did not write. Tiny models with every weight random (norms, biases and BatchNorm
statistics included) are saved with ``save_pretrained``, converted with
``sfm_d2.checkpoint.convert_hf_mask2former`` and loaded through detectron2's checkpointer into
``SFMMaskFormer`` (SFM off). On a batch of two odd-sized images the backbone levels, the pixel
decoder's mask features and three levels, every decoder layer's class and mask logits and the
semantic maps agree to 1e-10 relative, for a Swin and a ResNet backbone and for both decoder orders
(post-norm, Mask2Former's default, and pre-norm).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerSinePositionEmbedding,
)

from sfm_d2.checkpoint import convert_hf_mask2former, save_converted
from sfm_d2.hf_mask2former import (
    config_mismatches,
    convert_hf_state_dict,
    hf_config_options,
    read_hf_config,
)
from sfm_d2.modeling.mask2former import PositionEmbeddingSine

from . import hf_mask2former_checks as hf

TOLERANCE = 1e-10
CASES = [("swin", False), ("swin", True), ("resnet", False)]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(
    scope="module", params=CASES, ids=[f"{b}-{'pre' if p else 'post'}" for b, p in CASES]
)
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    backbone, pre_norm = request.param
    torch.set_num_threads(1)
    reference = hf.hf_model(backbone, pre_norm)
    converted = hf.save_and_convert(reference, tmp_path_factory.mktemp(f"{backbone}{pre_norm}"))
    ours, report = hf.our_model(converted, sfm=False)
    outputs = hf.our_outputs(ours, hf.images())
    expected = hf.hf_outputs(reference.double(), outputs["input"])
    return {
        "ours": outputs, "hf": expected, "report": report, "converted": converted,
        "reference": reference,
    }  # fmt: skip


def assert_close(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    error = hf.relative_error(ours, reference)
    assert error <= TOLERANCE, f"{what}: relative error {error:.3g}"


def test_converted_weights_fill_the_plain_model_exactly(case: dict[str, Any]) -> None:
    report = case["report"]
    assert report.ok, report.format()
    assert report.new == []
    assert report.ignored == []


def test_backbone_levels_match(case: dict[str, Any]) -> None:
    for level, (ours, theirs) in enumerate(zip(case["ours"]["backbone"], case["hf"]["backbone"], strict=True)):  # fmt: skip
        assert_close(ours, theirs, f"res{level + 2}")


def test_pixel_decoder_outputs_match(case: dict[str, Any]) -> None:
    ours, theirs = case["ours"], case["hf"]
    assert_close(ours["mask_features"], theirs["mask_features"], "mask features")
    assert len(ours["multi_scale"]) == len(theirs["multi_scale"]) == 3
    for level, (a, b) in enumerate(zip(ours["multi_scale"], theirs["multi_scale"], strict=True)):
        assert a.shape[-2:] == b.shape[-2:]
        assert_close(a, b, f"multi-scale level {level}")


def test_every_decoder_layer_matches(case: dict[str, Any]) -> None:
    ours, theirs = case["ours"]["layers"], case["hf"]["layers"]
    assert len(ours) == len(theirs) == 5  # DEC_LAYERS: the query-only prediction + 4 layers
    for layer, ((our_cls, our_mask), (hf_cls, hf_mask)) in enumerate(zip(ours, theirs, strict=True)):  # fmt: skip
        assert_close(our_cls, hf_cls, f"class logits of layer {layer}")
        assert_close(our_mask, hf_mask, f"mask logits of layer {layer}")


def test_semantic_maps_match_the_official_inference(case: dict[str, Any]) -> None:
    ours = case["ours"]
    class_logits, mask_logits = case["hf"]["layers"][-1]
    padded = (int(ours["input"].shape[-2]), int(ours["input"].shape[-1]))
    assert padded == (101, 125)  # odd: no size divisibility, the batch's largest image
    expected = hf.official_semantic_maps(
        class_logits, mask_logits, padded, ours["image_sizes"], hf.OUTPUT_SIZES
    )
    for index, (score, reference) in enumerate(zip(ours["sem_seg"], expected, strict=True)):
        assert score.shape == (hf.CLASSES, *hf.OUTPUT_SIZES[index])
        assert_close(score, reference, f"sem_seg of image {index}")


@pytest.mark.parametrize(
    "perturbation",
    ["one element of a decoder FFN weight", "q and k of one Swin block swapped"],
)
def test_a_wrong_weight_fails_the_comparison(perturbation: str, tmp_path: Path) -> None:
    """The comparison can fail: one changed weight, or q/k stacked in the wrong order, is seen."""
    reference = hf.hf_model("swin")
    converted = hf.save_and_convert(reference, tmp_path)
    weights = convert_hf_mask2former(tmp_path / "hf")[0].model
    if perturbation.startswith("one element"):
        weights["sem_seg_head.predictor.transformer_ffn_layers.2.linear2.weight"][0, 0] += 1e-3
    else:
        qkv = weights["backbone.layers.1.blocks.1.attn.qkv.weight"]
        q, k, v = qkv.chunk(3)
        weights["backbone.layers.1.blocks.1.attn.qkv.weight"] = torch.cat([k, q, v])
    save_converted(weights, converted.path, matching_heuristics=False)
    ours, report = hf.our_model(converted, sfm=False)
    assert report.ok
    outputs = hf.our_outputs(ours, hf.images())
    expected = hf.hf_outputs(reference.double(), outputs["input"])
    errors = [hf.relative_error(a[1], b[1]) for a, b in zip(outputs["layers"], expected["layers"], strict=True)]  # fmt: skip
    assert max(errors) > 1e3 * TOLERANCE, errors


def test_every_file_layout_converts_to_the_same_weights(tmp_path: Path) -> None:
    """transformers 5 names (the in-memory state dict), 4.x names (what save_pretrained and the
    hub's files hold) and pytorch_model.bin all give the same official-named tensors."""
    reference = hf.hf_model("swin", seed=3)
    hf.save_and_convert(reference, tmp_path)
    from_file, _ = convert_hf_mask2former(tmp_path / "hf")
    from_memory = convert_hf_state_dict(reference.state_dict())
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(reference.state_dict(), binary / "pytorch_model.bin")
    from_bin, _ = convert_hf_mask2former(binary)
    assert from_file.backbone == from_memory.backbone == from_bin.backbone == "swin"
    for other in (from_memory, from_bin):
        assert set(other.model) == set(from_file.model)
        for key, value in from_file.model.items():
            assert torch.equal(other.model[key], value), key
    assert any(k.endswith("swin.layernorm.weight") for k in from_memory.dropped)


def test_config_options_describe_the_model(tmp_path: Path) -> None:
    hf.hf_model("resnet", pre_norm=True).save_pretrained(str(tmp_path))
    options = hf_config_options(read_hf_config(tmp_path))
    assert options["MODEL.BACKBONE.NAME"] == "build_sfm_resnet_backbone"
    assert options["MODEL.RESNETS.DEPTH"] == 50
    assert options["MODEL.MASK_FORMER.PRE_NORM"] is True
    assert options["MODEL.MASK_FORMER.DEC_LAYERS"] == 5
    assert options["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] == hf.CLASSES
    cfg = hf.our_config(options, sfm=False)
    assert config_mismatches(cfg, options) == []
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    assert config_mismatches(cfg, options) == [
        "MODEL.MASK_FORMER.PRE_NORM: config has False, the checkpoint needs True"
    ]


def test_converter_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    state = hf.hf_model("swin").state_dict()
    with pytest.raises(ValueError, match=r"not Hugging Face Mask2Former parameters.*extra\.head"):
        convert_hf_state_dict({**state, "model.extra.head.weight": torch.ones(1)})
    del state["model.transformer_module.decoder.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(ValueError, match="lacks one of its q/k/v projections"):
        convert_hf_state_dict(state)
    with pytest.raises(ValueError, match="model directory"):
        convert_hf_mask2former(tmp_path / "absent")
    (tmp_path / "config.json").write_text('{"model_type": "detr"}')
    with pytest.raises(ValueError, match="model_type must be 'mask2former'"):
        convert_hf_mask2former(tmp_path)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 4), (13, 16)])
def test_sine_encoding_is_hugging_faces(size: tuple[int, int]) -> None:
    """The uniform lattice is Mask2Former's (j + 1) / (n + eps), checked against the port."""
    x = torch.zeros(2, 3, *size, dtype=torch.float64)
    theirs = Mask2FormerSinePositionEmbedding(num_position_features=16, normalize=True)(
        x.shape, x.device, x.dtype
    )
    ours = PositionEmbeddingSine(num_feats=16)(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-14)
    assert math.isclose(float(theirs[0, 16, 0, 0]), math.sin(2 * math.pi / (size[1] + 1e-6)))
