"""Plug-and-play ARS insertion (issue 3, item 4): sites, traced positions, statelessness."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from sfm_core.functional import compose_positions, identity_positions, resample
from sfm_core.insertion import SFMModel, Traced, insert_ars, is_downsampling

from .toy_backbones import TinyConvNeXt, TinyResNet, TinySwin

RESNET_SITES = ["layer2", "layer3", "layer4"]
CONVNEXT_SITES = ["downsample_layers.1", "downsample_layers.2", "downsample_layers.3"]
SWIN_SITES = ["merges.0", "merges.1", "merges.2"]


def nudge(wrapper: SFMModel, scale: float = 0.3) -> None:
    """Random weights in every ARS's zero-initialised last layer: the ARS start to warp."""
    with torch.no_grad():
        for ars in wrapper.ars.values():
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
    wrapper = insert_ars(model, example_input=example, names=names, layout=layout, **kwargs)
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
    traced = wrapper(x)
    assert isinstance(traced, Traced)
    assert_outputs_close(traced.output, plain(x), atol=1e-10)
    assert [site.name for site in traced.trace] == {
        "resnet": RESNET_SITES,
        "convnext": CONVNEXT_SITES,
        "swin": SWIN_SITES,
    }[kind]


@pytest.mark.parametrize("kind", ["resnet", "convnext", "swin"])
def test_positions_are_traced_per_site(kind: str) -> None:
    plain, wrapper = build(kind)
    nudge(wrapper)
    x = torch.randn(2, 3, 52, 70, dtype=torch.float64)
    traced = wrapper(x)
    names = [site.name for site in traced.trace]
    shapes = site_inputs(plain, names, x)
    previous = identity_positions(2, 52, 70, dtype=torch.float64)
    for site in traced.trace:
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


def test_positions_at_init_are_the_uniform_lattice_of_each_site() -> None:
    _, wrapper = build("resnet")
    traced = wrapper(torch.randn(1, 3, 64, 96, dtype=torch.float64))
    for site, (height, width) in zip(traced.trace, [(16, 24), (8, 12), (4, 6)], strict=True):
        expected = identity_positions(1, height, width, dtype=torch.float64)
        torch.testing.assert_close(site.positions, expected, rtol=0, atol=1e-12)


def test_resnet_output_is_the_model_run_with_ars_before_each_stage() -> None:
    plain, wrapper = build("resnet")
    nudge(wrapper)
    x = torch.randn(2, 3, 45, 61, dtype=torch.float64)
    traced = wrapper(x)
    assert isinstance(plain, TinyResNet)
    h = plain.layer1(plain.stem(x))
    expected = [h]
    for site, name in zip(traced.trace, RESNET_SITES, strict=True):
        ars = wrapper.ars[name]
        out = ars(h)
        torch.testing.assert_close(out.grid, site.grid, rtol=0, atol=0)
        torch.testing.assert_close(out.features, resample(h, site.grid), rtol=0, atol=0)
        h = getattr(plain, name)(out.features)
        expected.append(h)
    assert_outputs_close(traced.output, expected, atol=0)
    assert (traced.output[-1] - plain(x)[-1]).abs().max() > 1e-3


def test_swin_sites_resample_nhwc_maps() -> None:
    plain, wrapper = build("swin")
    nudge(wrapper)
    x = torch.randn(1, 3, 52, 68, dtype=torch.float64)  # 13 x 17 tokens: odd sizes
    traced = wrapper(x)
    assert isinstance(plain, TinySwin)
    h = plain.stages[0](plain.patch_embed(x).permute(0, 2, 3, 1))
    expected = [h.permute(0, 3, 1, 2)]
    for index, site in enumerate(traced.trace):
        warped = resample(h.permute(0, 3, 1, 2), site.grid).permute(0, 2, 3, 1)
        h = plain.stages[index + 1](plain.merges[index](warped))
        expected.append(h.permute(0, 3, 1, 2))
    assert_outputs_close(traced.output, expected, atol=1e-12)
    assert [tuple(site.positions.shape[-2:]) for site in traced.trace] == [(13, 17), (7, 9), (4, 5)]


def test_gradients_reach_every_ars_after_a_nudge() -> None:
    _, wrapper = build("convnext")
    wrapper.train()
    x = torch.randn(2, 3, 44, 52, dtype=torch.float64)
    sum(out.square().mean() for out in wrapper(x).output).backward()
    for key, ars in wrapper.ars.items():  # at init only the last layer can learn
        assert ars.generator.project.weight.grad.abs().max() > 0, key
    wrapper.zero_grad()
    nudge(wrapper)
    sum(out.square().mean() for out in wrapper(x).output).backward()
    for name, parameter in wrapper.ars.named_parameters():
        if name.endswith("project.bias"):
            continue  # a constant shift of the logits cancels in exp(A - max A)
        assert parameter.grad is not None, name
        assert parameter.grad.abs().max() > 0, name


def test_sites_chosen_by_predicate() -> None:
    model = TinyConvNeXt().double().eval()
    plain = copy.deepcopy(model)

    def strided_after_the_stem(name: str, module: nn.Module) -> bool:
        return is_downsampling(module) and not name.startswith("downsample_layers.0")

    example = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    wrapper = insert_ars(model, example_input=example, predicate=strided_after_the_stem)
    assert wrapper.site_names == tuple(f"{name}.1" for name in CONVNEXT_SITES)
    assert sorted(wrapper.ars.keys()) == [f"downsample_layers__{i}__1" for i in (1, 2, 3)]
    assert [ars.channels for ars in wrapper.ars.values()] == [8, 12, 16]
    x = torch.randn(1, 3, 37, 41, dtype=torch.float64)
    assert_outputs_close(wrapper(x).output, plain(x), atol=1e-10)


def test_state_dict_keeps_the_model_keys_and_round_trips() -> None:
    plain, wrapper = build("resnet")
    nudge(wrapper)
    assert list(wrapper.model.state_dict()) == list(plain.state_dict())
    keys = set(wrapper.state_dict())
    assert {f"model.{key}" for key in plain.state_dict()} <= keys
    assert {key.split(".")[1] for key in keys if key.startswith("ars.")} == set(RESNET_SITES)
    buffer = io.BytesIO()
    torch.save(wrapper.state_dict(), buffer)
    buffer.seek(0)
    _, fresh = build("resnet")
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    assert_outputs_close(fresh(x).output, wrapper(x).output, atol=0)


def tensor_attributes(model: nn.Module) -> list[str]:
    return [
        f"{name}.{attribute}"
        for name, module in model.named_modules()
        for attribute, value in vars(module).items()
        if isinstance(value, torch.Tensor)
    ]


def test_stateless_between_calls() -> None:
    plain, wrapper = build("resnet")
    nudge(wrapper)
    before = tensor_attributes(wrapper)
    first_input = torch.randn(1, 3, 45, 61, dtype=torch.float64)
    second_input = torch.randn(2, 3, 33, 29, dtype=torch.float64)
    first = wrapper(first_input)
    second = wrapper(second_input)
    assert tensor_attributes(wrapper) == before == []
    assert tuple(first.trace[0].positions.shape) == (1, 2, 12, 16)
    assert tuple(second.trace[0].positions.shape) == (2, 2, 9, 8)
    # A fresh copy that never saw the first input gives the same second result.
    again = copy.deepcopy(wrapper)(second_input)
    assert_outputs_close(second.output, again.output, atol=0)
    for a, b in zip(second.trace, again.trace, strict=True):
        torch.testing.assert_close(a.positions, b.positions, rtol=0, atol=0)
    # Outside the wrapper's forward the hooks do nothing: the inner model is the plain model.
    assert_outputs_close(wrapper.model(second_input), plain(second_input), atol=0)


def test_a_deep_copy_has_its_own_ars() -> None:
    _, wrapper = build("convnext")
    twin = copy.deepcopy(wrapper)
    nudge(twin)
    x = torch.randn(1, 3, 40, 44, dtype=torch.float64)
    assert (twin(x).output[-1] - wrapper(x).output[-1]).abs().max() > 1e-3
    for site in wrapper(x).trace:
        torch.testing.assert_close(
            site.positions, identity_positions(1, *site.positions.shape[-2:], dtype=torch.float64)
        )


@pytest.mark.parametrize("kind", ["channels_last", "batch_one"])
def test_non_contiguous_input_and_batch_one(kind: str) -> None:
    _, wrapper = build("resnet")
    nudge(wrapper)
    x = torch.randn(1 if kind == "batch_one" else 2, 3, 45, 61, dtype=torch.float64)
    odd = x.contiguous(memory_format=torch.channels_last) if kind == "channels_last" else x
    assert_outputs_close(wrapper(odd).output, wrapper(x.contiguous()).output, atol=1e-12)


def test_dry_run_leaves_training_flags_and_statistics_alone() -> None:
    model = TinyResNet().train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    wrapper = insert_ars(model, example_input=torch.randn(2, 3, 32, 32), names=RESNET_SITES)
    assert all(module.training for module in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats[key]), key
    assert all(p.dtype == torch.float32 for p in wrapper.ars.parameters())
    assert wrapper.training
    assert all(module.training for module in wrapper.ars.modules())
    assert not insert_ars(
        TinyResNet().eval(), example_input=torch.randn(1, 3, 32, 32), names=RESNET_SITES
    ).ars.training
    wrapper(torch.randn(2, 3, 32, 32))  # trains with batch statistics


def test_ars_keyword_arguments_reach_every_site() -> None:
    model = TinyResNet()
    wrapper = insert_ars(
        model,
        example_input=torch.randn(1, 3, 32, 32),
        names=RESNET_SITES,
        generator="conv",
        window=3,
        fwhm=2.0,
    )
    assert all(ars.window == 3 and ars.fwhm == 2.0 for ars in wrapper.ars.values())
    assert all(type(ars.generator).__name__ == "ConvAttention" for ars in wrapper.ars.values())


class SharedConv(nn.Module):
    """Runs one conv twice: a site that would run twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.unused = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "message"),
    [
        (
            TinyResNet,
            {"names": ["layer2"], "predicate": is_downsampling},
            ValueError,
            "exactly one",
        ),
        (TinyResNet, {}, ValueError, "exactly one"),
        (TinyResNet, {"names": "layer2"}, ValueError, "names must be a non-empty sequence"),
        (TinyResNet, {"names": []}, ValueError, "names must be a non-empty sequence"),
        (TinyResNet, {"names": ["layer9"]}, ValueError, "'layer9'.*not a submodule"),
        (TinyResNet, {"names": [""]}, ValueError, "non-empty module names"),
        (TinyResNet, {"names": RESNET_SITES, "layout": "nlc"}, ValueError, "layout"),
        (TinyResNet, {"predicate": lambda n, m: False}, ValueError, "predicate chose no module"),
        (TinyResNet, {"predicate": "layer2"}, TypeError, "predicate must be callable"),
        (
            TinyResNet,
            {"predicate": lambda n, m: is_downsampling(m) and n.startswith("layer2")},
            ValueError,
            "receive the same tensor",
        ),
        (TinyResNet, {"names": ["layer2", "layer2.0"]}, ValueError, "receive the same tensor"),
        (SharedConv, {"names": ["conv"]}, ValueError, "ran 2 times"),
        (SharedConv, {"names": ["unused"]}, ValueError, "ran 0 times"),
        (SharedConv, {"names": ["head"]}, ValueError, "'head' receives"),
    ],
)
def test_bad_arguments_raise_naming_them(
    make: Callable[[], nn.Module], kwargs: dict[str, object], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        insert_ars(make(), example_input=torch.randn(1, 3, 32, 32), **kwargs)  # type: ignore[arg-type]


def test_bad_model_and_inputs_raise() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        insert_ars("resnet", example_input=torch.randn(1, 3, 8, 8), names=["x"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="example_input must be a 4-D"):
        insert_ars(TinyResNet(), example_input=torch.randn(3, 8, 8), names=RESNET_SITES)
    _, wrapper = build("resnet")
    with pytest.raises(ValueError, match="x must be a 4-D"):
        wrapper(torch.randn(3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="channels must be a non-empty mapping"):
        SFMModel(TinyResNet(), {})


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
