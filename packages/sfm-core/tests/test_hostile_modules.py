"""Hostile input to sfm_core.nn's modules and loss, and to the analysis (issue 11, item 1).

Modules run in eval mode for the finiteness-per-image property (training-mode BatchNorm shares
batch statistics, hence a NaN, across images: documented) and in training mode for the
error-or-shape property, with BatchNorm and with :func:`sfm_core.nn.group_norm`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sfm_core.analysis import aliasing_ratio, aliasing_report, radial_power_spectrum
from sfm_core.insertion import insert_ars
from sfm_core.nn import (
    AdaptiveResampling,
    ConvAttention,
    LearnableHighPass,
    LocalPixelRelation,
    MultiScaleAdaptiveUpsampling,
    PyramidAttention,
    PyramidContext,
    edge_guidance_loss,
    group_norm,
)

from .hostile_inputs import (
    FEW,
    FLOATS,
    HOSTILE,
    Spec,
    assert_result,
    bad_scalars,
    non_finite_images,
    normal,
    outcome,
    scalar,
    specs,
    unit,
)

NORMS = st.sampled_from(["batch", "group"])


def norm_layer(kind: str) -> Any:
    return nn.BatchNorm2d if kind == "batch" else group_norm()


@FEW
@given(
    channels=st.sampled_from([1, 2, 5, 8]),
    x=specs([None, None, None, None]),
    generator=st.sampled_from(["avg-lhpf-psp", "avg-psp", "conv"]),
    norm=NORMS,
    training=st.booleans(),
)
def test_adaptive_resampling(
    channels: int, x: Spec, generator: str, norm: str, training: bool
) -> None:
    ars = AdaptiveResampling(channels, generator=generator, norm_layer=norm_layer(norm))
    ars.train(training)
    features = x.build(normal)
    result = outcome(lambda: ars(features), ["x", "norm_layer"])
    if result is not None:
        broken = non_finite_images(features)
        if training:  # batch statistics may carry one image's NaN to the others
            broken = broken | broken.any()
        assert_result(result.features, features.shape, features.dtype, broken)
        assert_result(
            result.grid, (*features.shape[:1], *features.shape[2:], 2), torch.float32, broken
        )


@FEW
@given(window=scalar(st.integers(1, 9)), fwhm=scalar(st.floats(0.5, 9)), s_min=bad_scalars())
def test_adaptive_resampling_settings(window: Any, fwhm: Any, s_min: Any) -> None:
    """Bad settings fail at construction, not at the first forward."""
    ars = outcome(
        lambda: AdaptiveResampling(4, window=window, fwhm=fwhm, s_min=s_min),
        ["window", "fwhm", "s_min"],
    )
    if ars is not None:
        assert ars(torch.randn(2, 4, 3, 3)).features.isfinite().all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fwhm": 1e-30}, "fwhm must be at least"),
        ({"s_min": 1e-45}, r"s_min must be in \["),
        ({"window": 10**6}, "window must be a positive int at most"),
        ({"norm_layer": 3}, "norm_layer must be a callable"),
        ({"norm_layer": lambda c: nn.GroupNorm(32, c)}, r"norm_layer\(2\) failed"),
        ({"backend": 3}, "backend must be a str"),
        ({"generator": None}, "generator must be one of"),
    ],
)
def test_adaptive_resampling_refuses(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        AdaptiveResampling(8, **kwargs)


@pytest.mark.parametrize("channels", [5, 8, 12, 36])
def test_group_norm_remedy_trains_batch_one_on_narrow_maps(channels: int) -> None:
    """Issue 11: the batch-1 remedy works for any group count and 1-pixel-wide maps (C >= 5:
    with C <= 4 each pyramid branch has one channel, refused with a clear error below)."""
    ars = AdaptiveResampling(channels, norm_layer=group_norm()).train()
    for size in [(1, 1), (1, 7), (2, 2)]:
        out = ars(torch.randn(1, channels, *size))
        out.features.sum().backward()
        assert out.features.shape == (1, channels, *size)


def test_batch_one_training_names_the_remedy() -> None:
    with pytest.raises(ValueError, match=r"x has batch 1.*group_norm"):
        AdaptiveResampling(8).train()(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"one channel per group"):
        AdaptiveResampling(4, norm_layer=group_norm()).train()(torch.randn(1, 4, 4, 4))


@FEW
@given(
    values=specs([None, None, None, None]),
    guide=specs([None, 4, None, None], dtypes=FLOATS),
    dilations=scalar(st.lists(st.sampled_from([1, 2, 9, 10**5]), min_size=1, max_size=2)),
    gated=st.booleans(),
)
def test_local_pixel_relation(values: Spec, guide: Spec, dilations: Any, gated: bool) -> None:
    module = outcome(lambda: LocalPixelRelation(4, dilations, gated=gated), ["dilations"])
    if module is None:
        return
    module.eval()
    v, g = values.build(normal), guide.build(normal)
    result = outcome(lambda: module(v, g), ["values", "guide", "batch"])
    if result is not None:
        broken = non_finite_images(v) | non_finite_images(g)
        assert_result(result, v.shape, v.dtype, broken)


@FEW
@given(
    z=specs([None, 3, None, None], dtypes=FLOATS),
    positions=specs([None, 2, None, None], dtypes=FLOATS),
    size=scalar(st.tuples(st.integers(1, 5), st.integers(1, 5))),
    with_guide=st.booleans(),
)
def test_multi_scale_adaptive_upsampling(
    z: Spec, positions: Spec, size: Any, with_guide: bool
) -> None:
    module = MultiScaleAdaptiveUpsampling(3, 3, (1, 3)).eval()
    values, where = z.build(normal), positions.build(unit)
    guide = None
    if with_guide and isinstance(size, tuple) and len(size) == 2 and values.dim() == 4:
        guide = torch.randn(values.shape[0], 3, *[int(s) for s in size])
    result = outcome(
        lambda: module(values, where, size, guide), ["z", "positions", "size", "guide", "batch"]
    )
    if result is not None:
        broken = non_finite_images(values) | non_finite_images(where)
        assert_result(result, (*values.shape[:2], *size), values.dtype, broken)


@FEW
@given(
    x=specs([None, None, None, None]), which=st.sampled_from(["lhp", "context", "pyramid", "conv"])
)
def test_generators(x: Spec, which: str) -> None:
    module = {
        "lhp": lambda: LearnableHighPass(3),
        "context": lambda: PyramidContext(3, norm_layer=group_norm()),
        "pyramid": lambda: PyramidAttention(3),
        "conv": lambda: ConvAttention(3),
    }[which]().eval()
    features = x.build(normal)
    result = outcome(lambda: module(features), ["x"])
    if result is not None:
        channels = {"lhp": 3, "context": module.out_channels if which == "context" else 0}
        expected = (features.shape[0], channels.get(which, 1), *features.shape[2:])
        assert_result(result, expected, features.dtype, non_finite_images(features))


@HOSTILE
@given(
    logits=specs([None, 1, None, None]),
    labels=specs([None, None, None], dtypes=(torch.int64, torch.uint8, torch.float32)),
    sigma=scalar(st.floats(0.1, 5)),
    ignore_index=scalar(st.sampled_from([255, 0, -1])),
)
def test_edge_guidance_loss(logits: Spec, labels: Spec, sigma: Any, ignore_index: Any) -> None:
    a = logits.build(normal)
    y = labels.build(lambda g, shape: torch.randint(0, 3, shape, generator=g))
    result = outcome(
        lambda: edge_guidance_loss(a, y, sigma=sigma, ignore_index=ignore_index),
        ["logits", "labels", "sigma", "ignore_index", "batch"],
    )
    if result is not None:
        assert result.shape == ()
        assert result.dtype == torch.promote_types(a.dtype, torch.float32)
        if not bool(non_finite_images(a).any()):
            assert bool(result.isfinite())


@HOSTILE
@given(
    x=specs([None, None, None, None], dtypes=FLOATS),
    scale=st.sampled_from([1.0, 1e-300, 1e150, 1e300]),
    stride=scalar(st.sampled_from([1, 2, (2, 3)])),
    bins=scalar(st.sampled_from([None, 1, 4])),
)
def test_analysis(x: Spec, scale: float, stride: Any, bins: Any) -> None:
    maps = x.build(normal)
    if maps.dtype == torch.float64:
        maps = maps * scale  # float64 maps of extreme magnitude: the ratio is scale-free
    ratio = outcome(lambda: aliasing_ratio(maps, stride), ["x", "stride"])
    if ratio is not None:
        expected = () if maps.dim() == 3 else (maps.shape[0],)
        assert tuple(ratio.shape) == expected
        assert ratio.dtype == torch.float64
        assert bool(((ratio >= 0) & (ratio <= 1)).all())
    spectrum = outcome(lambda: radial_power_spectrum(maps, bins=bins), ["x", "bins"])
    if spectrum is not None:
        frequencies, power = spectrum
        assert bool(frequencies.isfinite().all())
        assert not bool(power.isinf().any())


def test_aliasing_ratio_of_huge_float64_maps_is_the_ratio_of_the_map() -> None:
    """Issue 11: float64 maps of huge magnitude gave NaN; the ratio is scale-free."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(aliasing_ratio(x * 1e300), aliasing_ratio(x))
    torch.testing.assert_close(aliasing_ratio(x * 1e-300), aliasing_ratio(x))


@FEW
@given(
    # float32 maps the model can take: a float16 or 0x0 example_input makes the user's model
    # itself raise (a RuntimeError from torch inside the dry run), which insert_ars passes on.
    example=specs([None, 3, 5, 6], dtypes=(torch.float32,)),
    sites=st.sampled_from(["auto", ["0"], ["1"], ["no.such.layer"], [], 3, "0", ["0", "0"]]),
    layout=st.sampled_from([None, "nchw", "nhwc", "NCHW"]),
)
def test_insert_ars(example: Spec, sites: Any, layout: Any) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 1)).eval()
    x = example.build(normal)
    names = ["sites", "example_input", "layout", "module", "x"]
    wrapped = outcome(lambda: insert_ars(model, sites, example_input=x, layout=layout), names)
    if wrapped is not None:
        result = outcome(lambda: wrapped.eval()(x), names)
        if result is not None:
            assert_result(result, model(x).shape, x.dtype, non_finite_images(x))


@FEW
@given(
    # 4-D float32 batches the model can take (its own errors on others are not the report's).
    batch=specs([None, 3, 6, 5], dtypes=(torch.float32,), rank_change=False),
    stride=scalar(st.sampled_from([None, 2, (1, 2)])),
    names=st.sampled_from([None, ["0"], ["nope"], []]),
)
def test_aliasing_report(batch: Spec, stride: Any, names: Any) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2)).eval()
    x = batch.build(normal)
    report = outcome(
        lambda: aliasing_report(model, [x], names=names, stride=stride),
        ["batches", "names", "stride", "input of layer"],
    )
    if report is not None:
        for layer in report.layers:
            assert layer.count == 0 or 0 <= layer.mean <= 1
