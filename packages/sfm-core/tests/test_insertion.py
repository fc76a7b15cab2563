"""Plug-and-play ARS insertion on small hand-written backbones: sites, positions, checks (fp64)."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from sfm_core.functional import (
    compose_positions,
    identity_positions,
    resample,
    resize_positions,
)
from sfm_core.insertion import SFMModel, insert_ars, is_downsampling

from .toy_backbones import TinyConvNeXt, TinyResNet, TinySwin

RESNET_SITES = ["layer2", "layer3", "layer4"]
CONVNEXT_SITES = ["downsample_layers.1", "downsample_layers.2", "downsample_layers.3"]
SWIN_SITES = ["merges.0", "merges.1", "merges.2"]


def nudge(wrapper: SFMModel, scale: float = 0.3) -> None:
    """Random weights in every ARS's zero-initialised last layer: the ARS start to warp."""
    with torch.no_grad():
        for ars in wrapper.sfm_ars.values():
            for parameter in ars.generator.project.parameters():
                parameter.copy_(torch.randn_like(parameter) * scale)


def build(kind: str, **kwargs: object) -> tuple[nn.Module, SFMModel]:
    """A float64 eval-mode model and its wrapper; the plain copy keeps the original weights."""
    torch.manual_seed(0)
    model: nn.Module
    if kind == "resnet":
        model, names, layout = TinyResNet(), RESNET_SITES, "nchw"
    elif kind == "convnext":
        model, names, layout = TinyConvNeXt(), CONVNEXT_SITES, "nchw"
    else:
        model, names, layout = TinySwin(), SWIN_SITES, "nhwc"
    model = model.double().eval()
    plain = copy.deepcopy(model)
    example = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    wrapper = insert_ars(model, names, example_input=example, layout=layout, **kwargs)
    return plain, wrapper.eval()


def site_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}
    handles = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: shapes.__setitem__(name, args[0].shape)
        )
        for name in names
    ]
    model(x)
    for handle in handles:
        handle.remove()
    return shapes


def assert_outputs_close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b, strict=True):
        torch.testing.assert_close(left, right, rtol=0, atol=atol)


def test_is_downsampling() -> None:
    assert is_downsampling(nn.Conv2d(3, 4, 3, stride=2))
    assert is_downsampling(nn.Conv2d(3, 4, 3, stride=(1, 2)))
    assert not is_downsampling(nn.Conv2d(3, 4, 3, padding=1))
    assert is_downsampling(nn.MaxPool2d(2))  # stride defaults to the kernel size
    assert not is_downsampling(nn.MaxPool2d(3, stride=1, padding=1))
    assert is_downsampling(nn.AvgPool2d(3, stride=2))
    assert is_downsampling(nn.LPPool2d(2, 2))
    assert is_downsampling(nn.PixelUnshuffle(2))
    assert not is_downsampling(nn.PixelUnshuffle(1))
    assert not is_downsampling(nn.ConvTranspose2d(3, 4, 2, stride=2))
    assert not is_downsampling(nn.AdaptiveAvgPool2d(1))
    assert not is_downsampling(nn.Linear(3, 4))


@pytest.mark.parametrize("kind", ["resnet", "convnext", "swin"])
def test_equal_to_the_plain_model_at_init(kind: str) -> None:
    plain, wrapper = build(kind)
    x = torch.randn(2, 3, 52, 70, dtype=torch.float64)
    output = wrapper(x)
    assert isinstance(output, list)  # what the model returns, nothing more
    assert_outputs_close(output, plain(x), atol=1e-12)
    assert [site.name for site in wrapper.sfm_trace().sites] == {
        "resnet": RESNET_SITES,
        "convnext": CONVNEXT_SITES,
        "swin": SWIN_SITES,
    }[kind]


@pytest.mark.parametrize("kind", ["resnet", "convnext", "swin"])
def test_positions_are_traced_per_site(kind: str) -> None:
    plain, wrapper = build(kind)
    nudge(wrapper)
    x = torch.randn(2, 3, 52, 70, dtype=torch.float64)
    wrapper(x)
    sites = wrapper.sfm_trace().sites
    names = [site.name for site in sites]
    shapes = site_inputs(plain, names, x)
    previous = identity_positions(2, 52, 70, dtype=torch.float64)
    for site in sites:
        shape = shapes[site.name]
        height, width = shape[-2:] if kind != "swin" else shape[1:3]
        assert site.grid.shape == (2, height, width, 2)
        assert site.logits.shape == (2, 1, height, width)
        assert site.positions.shape == (2, 2, height, width)
        assert not site.positions.requires_grad
        assert site.grid.requires_grad  # attached: losses on the grid reach the generator
        expected = compose_positions(previous, site.grid)
        torch.testing.assert_close(site.positions, expected, rtol=0, atol=0)
        # The warp really moved pixels, and it never folds: x grows along rows, y down columns.
        uniform = identity_positions(2, height, width, dtype=torch.float64)
        assert (site.positions - uniform).abs().max() > 1e-3
        assert (site.positions[:, 0].diff(dim=-1) >= -1e-12).all()
        assert (site.positions[:, 1].diff(dim=-2) >= -1e-12).all()
        previous = site.positions


def test_positions_per_level_of_a_multi_level_backbone() -> None:
    """Level i of a backbone that returns every stage: uniform before the first site, then the
    positions of the last site it depends on, resized to its size (METHOD.md §2)."""
    _, wrapper = build("resnet")
    nudge(wrapper)
    x = torch.randn(2, 3, 45, 61, dtype=torch.float64)
    outputs = wrapper(x)
    trace = wrapper.sfm_trace()
    assert isinstance(trace.levels, list)
    assert len(trace.levels) == 4
    first = outputs[0].shape[-2:]
    torch.testing.assert_close(trace.levels[0], identity_positions(2, *first, dtype=x.dtype))
    for level, output, site in zip(trace.levels[1:], outputs[1:], trace.sites, strict=True):
        expected = resize_positions(site.positions, tuple(output.shape[-2:]))
        torch.testing.assert_close(level, expected, rtol=0, atol=0)


def test_positions_at_init_are_the_uniform_lattice_of_each_site() -> None:
    _, wrapper = build("resnet")
    wrapper(torch.randn(1, 3, 64, 96, dtype=torch.float64))
    sites = wrapper.sfm_trace().sites
    for site, (height, width) in zip(sites, [(16, 24), (8, 12), (4, 6)], strict=True):
        expected = identity_positions(1, height, width, dtype=torch.float64)
        torch.testing.assert_close(site.positions, expected, rtol=0, atol=1e-12)


def test_resnet_output_is_the_model_run_with_ars_before_each_stage() -> None:
    plain, wrapper = build("resnet")
    nudge(wrapper)
    x = torch.randn(2, 3, 45, 61, dtype=torch.float64)
    output = wrapper(x)
    assert isinstance(plain, TinyResNet)
    h = plain.layer1(plain.stem(x))
    expected = [h]
    for site, name in zip(wrapper.sfm_trace().sites, RESNET_SITES, strict=True):
        out = wrapper.sfm_ars[name](h)
        torch.testing.assert_close(out.grid, site.grid, rtol=0, atol=0)
        torch.testing.assert_close(out.features, resample(h, site.grid), rtol=0, atol=0)
        h = getattr(plain, name)(out.features)
        expected.append(h)
    assert_outputs_close(output, expected, atol=0)
    assert (output[-1] - plain(x)[-1]).abs().max() > 1e-3


def test_swin_sites_resample_nhwc_maps() -> None:
    plain, wrapper = build("swin")
    nudge(wrapper)
    x = torch.randn(1, 3, 52, 68, dtype=torch.float64)  # 13 x 17 tokens: odd sizes
    output = wrapper(x)
    sites = wrapper.sfm_trace().sites
    assert isinstance(plain, TinySwin)
    h = plain.stages[0](plain.patch_embed(x).permute(0, 2, 3, 1))
    expected = [h.permute(0, 3, 1, 2)]
    for index, site in enumerate(sites):
        warped = resample(h.permute(0, 3, 1, 2), site.grid).permute(0, 2, 3, 1)
        h = plain.stages[index + 1](plain.merges[index](warped))
        expected.append(h.permute(0, 3, 1, 2))
    assert_outputs_close(output, expected, atol=1e-12)
    assert [tuple(site.positions.shape[-2:]) for site in sites] == [(13, 17), (7, 9), (4, 5)]


def test_gradients_reach_every_ars_after_a_nudge() -> None:
    _, wrapper = build("convnext")
    wrapper.train()
    x = torch.randn(2, 3, 44, 52, dtype=torch.float64)
    sum(out.square().mean() for out in wrapper(x)).backward()
    for key, ars in wrapper.sfm_ars.items():  # at init only the last layer can learn
        assert ars.generator.project.weight.grad.abs().max() > 0, key
    wrapper.zero_grad()
    nudge(wrapper)
    sum(out.square().mean() for out in wrapper(x)).backward()
    for name, parameter in wrapper.sfm_ars.named_parameters():
        if name.endswith("project.bias"):
            continue  # a constant shift of the logits cancels in exp(A - max A)
        assert parameter.grad is not None, name
        assert parameter.grad.abs().max() > 0, name


def test_training_steps_change_the_ars_parameters() -> None:
    torch.manual_seed(0)
    wrapper = insert_ars(TinyResNet(), RESNET_SITES, example_input=torch.randn(1, 3, 48, 48))
    wrapper.train()
    before = {key: value.clone() for key, value in wrapper.sfm_ars.state_dict().items()}
    optimizer = torch.optim.SGD(wrapper.parameters(), lr=0.1)
    images, target = torch.randn(2, 3, 48, 48), torch.randn(2, 20, 2, 2)
    for _ in range(2):  # an unchanged loop: the wrapper returns the model's outputs
        optimizer.zero_grad()
        loss = (wrapper(images)[-1] - target).square().mean()
        loss.backward()
        optimizer.step()
    after = wrapper.sfm_ars.state_dict()
    for site in RESNET_SITES:
        for part in ("generator.project.weight", "generator.high_pass.weight"):
            key = f"{site}.{part}"
            assert (after[key] - before[key]).abs().max() > 0, key


def test_sites_chosen_by_predicate() -> None:
    model = TinyConvNeXt().double().eval()
    plain = copy.deepcopy(model)

    def strided_after_the_stem(name: str, module: nn.Module) -> bool:
        return is_downsampling(module) and not name.startswith("downsample_layers.0")

    example = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    wrapper = insert_ars(model, strided_after_the_stem, example_input=example)
    assert wrapper.site_names == tuple(f"{name}.1" for name in CONVNEXT_SITES)
    assert sorted(wrapper.sfm_ars.keys()) == [f"downsample_layers__{i}__1" for i in (1, 2, 3)]
    assert [ars.channels for ars in wrapper.sfm_ars.values()] == [8, 12, 16]
    x = torch.randn(1, 3, 37, 41, dtype=torch.float64)
    assert_outputs_close(wrapper(x), plain(x), atol=1e-12)


def test_state_dict_is_the_models_plus_ars_and_round_trips() -> None:
    plain, wrapper = build("resnet")
    nudge(wrapper)
    plain_keys = list(plain.state_dict())
    keys = list(wrapper.state_dict())
    assert keys[: len(plain_keys)] == plain_keys  # the same keys, no prefix
    assert {key.split(".")[1] for key in keys[len(plain_keys) :]} == set(RESNET_SITES)
    assert all(key.startswith("sfm_ars.") for key in keys[len(plain_keys) :])
    buffer = io.BytesIO()
    torch.save(wrapper.state_dict(), buffer)
    buffer.seek(0)
    _, fresh = build("resnet")
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    assert_outputs_close(fresh(x), wrapper(x), atol=0)
    # The original weights load strictly; the ARS keep their values (here: the nudged ones).
    _, other = build("resnet")
    nudged = {key: value.clone() for key, value in wrapper.sfm_ars.state_dict().items()}
    wrapper.load_state_dict(other.model.state_dict(), strict=True)
    for key, value in wrapper.sfm_ars.state_dict().items():
        assert torch.equal(value, nudged[key]), key


def test_trace_is_of_the_last_call_and_copies_are_independent() -> None:
    _, wrapper = build("resnet")
    nudge(wrapper)
    first_input = torch.randn(1, 3, 45, 61, dtype=torch.float64)
    second_input = torch.randn(2, 3, 33, 29, dtype=torch.float64)
    wrapper(first_input)
    assert tuple(wrapper.sfm_trace().sites[0].positions.shape) == (1, 2, 12, 16)
    second = wrapper(second_input)
    trace = wrapper.sfm_trace()
    assert tuple(trace.sites[0].positions.shape) == (2, 2, 9, 8)
    # A fresh copy that never saw the first input gives the same second result.
    twin = copy.deepcopy(wrapper)
    again = twin(second_input)
    assert_outputs_close(second, again, atol=0)
    for a, b in zip(trace.sites, twin.sfm_trace().sites, strict=True):
        torch.testing.assert_close(a.positions, b.positions, rtol=0, atol=0)
    nudge(twin)  # the copy has its own ARS and its own trace
    twin(first_input)
    assert (twin(second_input)[-1] - wrapper(second_input)[-1]).abs().max() > 1e-3
    assert wrapper.sfm_trace().sites[0].positions.shape[0] == 2


def test_entered_below_the_wrapper_the_sites_still_warp() -> None:
    """A method of the model (here: its stages called one by one) runs ARS too; positions then
    start at the first site's own lattice (the image size is unknown there)."""
    _, wrapper = build("resnet")
    nudge(wrapper)
    x = torch.randn(2, 3, 45, 61, dtype=torch.float64)
    expected = wrapper(x)
    inner = wrapper.model
    assert isinstance(inner, TinyResNet)
    for _ in range(2):  # a site seen again starts a new record
        h = inner.layer1(inner.stem(x))
        outputs = [h]
        for name in RESNET_SITES[:2]:
            h = getattr(inner, name)(h)
            outputs.append(h)
    assert_outputs_close(outputs, expected[:3], atol=0)
    sites = wrapper.sfm_trace().sites
    assert [site.name for site in sites] == RESNET_SITES[:2]
    start = identity_positions(2, *sites[0].grid.shape[1:3], dtype=torch.float64)
    torch.testing.assert_close(sites[0].positions, compose_positions(start, sites[0].grid))


class WithHead(nn.Module):
    """A backbone with a head that a method replaces (like timm's reset_classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyResNet()
        self.head = nn.Linear(20, 3)

    def reset_head(self, classes: int) -> None:
        self.head = nn.Linear(20, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)[-1].mean(dim=(2, 3)))


def test_children_replaced_through_the_wrapper_stay_in_step() -> None:
    sites = [f"body.{name}" for name in RESNET_SITES]
    wrapper = insert_ars(WithHead(), sites, example_input=torch.randn(1, 3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    wrapper.reset_head(5)  # a method of the model, reached through the wrapper
    assert wrapper(x).shape == (2, 5)
    assert wrapper.head is wrapper.model.head
    assert tuple(wrapper.state_dict()["head.weight"].shape) == (5, 20)
    wrapper.head = nn.Linear(20, 7)  # an attribute set on the wrapper reaches the model
    assert wrapper(x).shape == (2, 7)
    assert wrapper.model.head is wrapper.head
    assert [name for name, _ in wrapper.named_children()] == ["body", "head", "sfm_ars"]
    assert any(parameter is wrapper.head.weight for parameter in wrapper.parameters())


@pytest.mark.parametrize("kind", ["channels_last", "batch_one"])
def test_non_contiguous_input_and_batch_one(kind: str) -> None:
    _, wrapper = build("resnet")
    nudge(wrapper)
    x = torch.randn(1 if kind == "batch_one" else 2, 3, 45, 61, dtype=torch.float64)
    odd = x.contiguous(memory_format=torch.channels_last) if kind == "channels_last" else x
    assert_outputs_close(wrapper(odd), wrapper(x.contiguous()), atol=1e-12)


def test_dry_run_leaves_training_flags_and_statistics_alone() -> None:
    model = TinyResNet().train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    wrapper = insert_ars(model, RESNET_SITES, example_input=torch.randn(2, 3, 32, 32))
    assert all(module.training for module in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats[key]), key
    assert all(p.dtype == torch.float32 for p in wrapper.sfm_ars.parameters())
    assert wrapper.training
    assert all(module.training for module in wrapper.sfm_ars.modules())
    assert not insert_ars(
        TinyResNet().eval(), RESNET_SITES, example_input=torch.randn(1, 3, 32, 32)
    ).sfm_ars.training
    wrapper.eval()
    assert not model.training
    assert not any(module.training for module in wrapper.modules())


def test_ars_keyword_arguments_reach_every_site() -> None:
    wrapper = insert_ars(
        TinyResNet(),
        RESNET_SITES,
        example_input=torch.randn(1, 3, 32, 32),
        generator="conv",
        window=3,
        fwhm=2.0,
    )
    assert all(ars.window == 3 and ars.fwhm == 2.0 for ars in wrapper.sfm_ars.values())
    assert all(type(ars.generator).__name__ == "ConvAttention" for ars in wrapper.sfm_ars.values())


class SharedConv(nn.Module):
    """Runs one conv twice: a site that would run twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.unused = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.conv(x)).mean(dim=(2, 3)))


def strided(name: str, module: nn.Module) -> bool:
    return is_downsampling(module)


@pytest.mark.parametrize(
    ("make", "sites", "kwargs", "error", "message"),
    [
        (TinyResNet, "layer2", {}, ValueError, "sites must be 'auto', a sequence"),
        (TinyResNet, [], {}, ValueError, "sites must be 'auto', a non-empty sequence"),
        (TinyResNet, 3, {}, ValueError, "sites must be 'auto', a non-empty sequence"),
        (TinyResNet, ["layer9"], {}, ValueError, "'layer9'.*not a submodule"),
        (TinyResNet, [""], {}, ValueError, "non-empty module names"),
        (TinyResNet, RESNET_SITES, {"layout": "nlc"}, ValueError, "layout"),
        (TinyResNet, "auto", {}, ValueError, "found no stage transition of a known family"),
        (TinyResNet, lambda n, m: False, {}, ValueError, "predicate chose no module"),
        (TinyResNet, ["layer2", "layer2.0"], {}, ValueError, "receive the same tensor"),
        (TinyResNet, strided, {}, ValueError, "receive the same tensor"),  # conv1 and shortcut
        (SharedConv, ["conv"], {}, ValueError, "ran 2 times"),
        (SharedConv, ["unused"], {}, ValueError, "ran 0 times"),
        (SharedConv, ["head"], {}, ValueError, "'head' receives"),
    ],
)
def test_bad_arguments_raise_naming_them(
    make: Callable[[], nn.Module],
    sites: object,
    kwargs: dict[str, object],
    error: type,
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        insert_ars(make(), sites, example_input=torch.randn(1, 3, 32, 32), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sites", "site", "block"),
    [
        (["layer3.0.conv1"], "layer3.0.conv1", "layer3.0"),  # the shortcut bypasses it
        (["layer3.0.downsample"], "layer3.0.downsample", "layer3.0"),
        (["layer2.1.conv2"], "layer2.1.conv2", "layer2.1"),  # an identity shortcut bypasses it
    ],
)
def test_a_site_on_one_branch_of_a_residual_block_is_refused(
    sites: object, site: str, block: str
) -> None:
    with pytest.raises(ValueError, match="would warp only one branch") as info:
        insert_ars(TinyResNet(), sites, example_input=torch.randn(1, 3, 32, 32))  # type: ignore[arg-type]
    assert f"before {site!r}" in str(info.value)
    assert f"place ARS before {block!r}" in str(info.value)


def test_bad_model_and_inputs_raise() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        insert_ars("resnet", ["x"], example_input=torch.randn(1, 3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="example_input must be a 4-D"):
        insert_ars(TinyResNet(), RESNET_SITES, example_input=torch.randn(3, 8, 8))
    _, wrapper = build("resnet")
    with pytest.raises(ValueError, match="x must be a 4-D"):
        wrapper(torch.randn(3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="channels must be a non-empty mapping"):
        SFMModel(TinyResNet(), {})
    with pytest.raises(ValueError, match="'layer2' already has an ARS"):
        SFMModel(wrapper.model, {"layer2": 12})


def test_sites_checked_again_at_every_call() -> None:
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    wrapper = SFMModel(flat, {"2": 4})
    with pytest.raises(ValueError, match="input of '2' must be a 4-D"):
        wrapper(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"input of 'layer2' must have 7 channels \[B, C, H, W\]"):
        SFMModel(TinyResNet(), {"layer2": 7}).eval()(torch.randn(1, 3, 32, 32))
    with pytest.raises(
        ValueError, match=r"input of 'merges.0' must have 5 channels \[B, H, W, C\]"
    ):
        SFMModel(TinySwin(), {"merges.0": 5}, layout="nhwc").eval()(torch.randn(1, 3, 32, 32))
    shared = SFMModel(SharedConv(), {"conv": 3})
    with pytest.raises(RuntimeError, match="'conv' ran twice"):
        shared(torch.randn(2, 3, 16, 16))
