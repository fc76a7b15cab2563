"""insert_ars on real timm and torchvision models (random weights, 64x64): drop-in and presets.

Each model is built and wrapped once per module. fp32 tolerance of "equal at init": ARS starts as
the identity up to the float rounding of its identity grid, so the wrapped output differs from
the original by at most 1e-5 of the output's largest magnitude (measured: 1e-6); in float64 the
bound is 1e-12 (measured: 4e-15 relative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from sfm_core.functional import identity_positions, resize_positions
from sfm_core.insertion import SFMModel, insert_ars, is_downsampling

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

SIZE = 64


def tiny_resnext() -> nn.Module:
    """timm's ResNeXt-50 32x4d with one block per stage (the same classes, a fraction of the time)."""
    return timm.create_model("resnext50_32x4d", layers=(1, 1, 1, 1))


# name -> (constructor, expected sites, layout, channels entering each site)
MODELS: dict[str, tuple[Callable[[], nn.Module], list[str], str, list[int]]] = {
    "timm-resnet50": (
        lambda: timm.create_model("resnet50"),
        ["layer2", "layer3", "layer4"],
        "nchw",
        [256, 512, 1024],
    ),
    "timm-resnext50": (tiny_resnext, ["layer2", "layer3", "layer4"], "nchw", [256, 512, 1024]),
    "timm-convnext_tiny": (
        lambda: timm.create_model("convnext_tiny"),
        ["stages.1", "stages.2", "stages.3"],
        "nchw",
        [96, 192, 384],
    ),
    "timm-swin_tiny": (
        lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=SIZE),
        ["layers.1", "layers.2", "layers.3"],
        "nhwc",
        [96, 192, 384],
    ),
    "torchvision-resnet50": (
        lambda: torchvision.models.resnet50(),
        ["layer2", "layer3", "layer4"],
        "nchw",
        [256, 512, 1024],
    ),
    "torchvision-convnext_tiny": (
        lambda: torchvision.models.convnext_tiny(),
        ["features.2", "features.4", "features.6"],
        "nchw",
        [96, 192, 384],
    ),
    "torchvision-swin_t": (
        lambda: torchvision.models.swin_t(),
        ["features.2", "features.4", "features.6"],
        "nhwc",
        [96, 192, 384],
    ),
}


@dataclass
class Wrapped:
    model: SFMModel
    x: torch.Tensor
    original_output: torch.Tensor
    original_state: dict[str, torch.Tensor]


@pytest.fixture(scope="module", params=list(MODELS))
def wrapped(request: pytest.FixtureRequest) -> Wrapped:
    torch.manual_seed(0)
    make = MODELS[request.param][0]
    model = make().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        original_output = model(x)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    return Wrapped(insert_ars(model, example_input=x[:1]), x, original_output, state)


def test_auto_finds_the_three_stage_transitions(
    wrapped: Wrapped, request: pytest.FixtureRequest
) -> None:
    _, sites, layout, channels = MODELS[request.node.callspec.params["wrapped"]]
    model = wrapped.model
    assert model.site_names == tuple(sites)
    assert model._sfm_recorder.layout == layout
    assert [ars.channels for ars in model.sfm_ars.values()] == channels


def test_returns_what_the_original_returns(wrapped: Wrapped) -> None:
    with torch.no_grad():
        output = wrapped.model(wrapped.x)
    assert isinstance(output, torch.Tensor)  # not an (output, trace) pair
    assert output.shape == wrapped.original_output.shape
    scale = float(wrapped.original_output.abs().max())
    torch.testing.assert_close(output, wrapped.original_output, rtol=0, atol=1e-5 * scale)
    trace = wrapped.model.sfm_trace()
    assert [site.name for site in trace.sites] == list(wrapped.model.site_names)
    side = SIZE // 4
    for index, site in enumerate(trace.sites):  # sites sit at 1/4, 1/8, 1/16 of the image
        size = side >> index
        assert site.positions.shape == (2, 2, size, size)
        assert site.grid.shape == (2, size, size, 2)
        uniform = identity_positions(2, size, size)
        torch.testing.assert_close(site.positions, uniform, rtol=0, atol=1e-5)
    assert trace.levels is None  # a classifier's logits are no map


def test_state_dict_is_the_original_plus_ars_and_original_weights_load(wrapped: Wrapped) -> None:
    model = wrapped.model
    keys = list(model.state_dict())
    original = list(wrapped.original_state)
    assert keys[: len(original)] == original
    extra = keys[len(original) :]
    sites = [site.replace(".", "__") for site in model.site_names]
    assert {key.split(".")[1] for key in extra} == set(sites)
    assert all(key.startswith("sfm_ars.") for key in extra)
    ars_before = {key: value.clone() for key, value in model.sfm_ars.state_dict().items()}
    first = next(key for key, value in wrapped.original_state.items() if value.is_floating_point())
    shifted = {**wrapped.original_state, first: wrapped.original_state[first] + 1}
    model.load_state_dict(shifted, strict=True)  # no ARS key: loads, ARS kept as they are
    assert torch.equal(model.state_dict()[first], shifted[first])
    for key, value in model.sfm_ars.state_dict().items():
        assert torch.equal(value, ars_before[key]), key
    model.load_state_dict(wrapped.original_state)
    partial = {**wrapped.original_state, extra[0]: model.state_dict()[extra[0]]}
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(partial, strict=True)


def test_residual_branches_see_one_grid() -> None:
    """In a torchvision ResNet both branches of layer2.0 receive the one warped map."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet
    model = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1]).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    wrapper = insert_ars(model, example_input=x[:1])
    with torch.no_grad():
        for parameter in wrapper.sfm_ars["layer2"].generator.project.parameters():
            parameter.copy_(torch.randn_like(parameter))
    seen: dict[str, Any] = {}
    block = wrapper.model.layer2[0]
    for name in ("conv1", "downsample"):
        block.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, args[0])
        )
    stem_and_layer1: list[torch.Tensor] = []
    wrapper.model.layer1.register_forward_hook(lambda m, a, out: stem_and_layer1.append(out))
    with torch.no_grad():
        wrapper(x)
    assert seen["conv1"] is seen["downsample"]
    site = wrapper.sfm_trace().sites[0]
    expected = torch.nn.functional.grid_sample(
        stem_and_layer1[0], site.grid, padding_mode="border", align_corners=False
    )
    torch.testing.assert_close(seen["conv1"], expected)
    assert (seen["conv1"] - stem_and_layer1[0]).abs().max() > 1e-3  # it really warped


def test_the_downsampling_predicate_is_refused_in_a_bottleneck() -> None:
    """torchvision's Bottleneck strides its 3x3 conv: a predicate on strided layers would warp
    that branch and the shortcut differently, and is refused with the reason."""
    resnet = torchvision.models.resnet
    model = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"would warp only one branch of 'layer2\.0'"):
        insert_ars(
            model,
            lambda name, module: is_downsampling(module) and name.startswith("layer"),
            example_input=torch.randn(1, 3, SIZE, SIZE),
        )


@pytest.mark.parametrize("family", ["resnet18", "swin"])
def test_features_only_levels(family: str) -> None:
    """timm's features_only backbones: positions per level, NCHW and NHWC (Swin)."""
    torch.manual_seed(0)
    if family == "resnet18":
        model = timm.create_model("resnet18", features_only=True)
        expected = ["layer2", "layer3", "layer4"]
    else:
        model = timm.create_model("swin_tiny_patch4_window7_224", img_size=SIZE, features_only=True)
        expected = ["layers_1", "layers_2", "layers_3"]
    x = torch.randn(2, 3, SIZE, SIZE)
    wrapper = insert_ars(model.eval(), example_input=x[:1])
    assert wrapper.site_names == tuple(expected)
    assert wrapper.feature_info.reduction()[-1] == 32  # the model's attributes stay reachable
    with torch.no_grad():
        for ars in wrapper.sfm_ars.values():
            for parameter in ars.generator.project.parameters():
                parameter.copy_(torch.randn_like(parameter))
        features = wrapper(x)
    trace = wrapper.sfm_trace()
    assert isinstance(trace.levels, list)
    assert len(trace.levels) == len(features)
    sites = [site.positions for site in trace.sites]
    before = len(features) - len(sites)  # levels computed before the first site are uniform
    for index, (feature, positions) in enumerate(zip(features, trace.levels, strict=True)):
        size = feature.shape[-2:] if family == "resnet18" else feature.shape[1:3]
        assert positions.shape == (2, 2, *size)
        if index < before:
            torch.testing.assert_close(positions, identity_positions(2, *size), rtol=0, atol=0)
        else:
            expected_positions = resize_positions(sites[index - before], tuple(size))
            torch.testing.assert_close(positions, expected_positions, rtol=0, atol=0)
    assert (
        trace.levels[-1] - identity_positions(2, *trace.levels[-1].shape[-2:])
    ).abs().max() > 1e-3


def test_float64_equal_at_init() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", layers=(1, 1, 1, 1)).double().eval()
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad():
        original = model(x)
        output = insert_ars(model, example_input=x)(x)
    torch.testing.assert_close(output, original, rtol=0, atol=1e-12 * float(original.abs().max()))
