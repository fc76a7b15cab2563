"""AdaptiveResampling (METHOD.md §1): identity at init, equal to the reference ops, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfm_core import functional
from sfm_core.nn import GENERATORS, AdaptiveResampling, Resampled


def identity_grid(batch: int, height: int, width: int) -> torch.Tensor:
    theta = torch.eye(2, 3, dtype=torch.float64).expand(batch, 2, 3)
    return F.affine_grid(theta, [batch, 1, height, width], align_corners=False)


def nudge(ars: AdaptiveResampling, scale: float = 0.5) -> None:
    """Random weights in the last (zero-initialised) layer, so the logits vary over the map."""
    with torch.no_grad():
        for parameter in ars.generator.project.parameters():
            parameter.copy_(torch.randn_like(parameter) * scale)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize(
    ("batch", "height", "width", "training"), [(1, 13, 17, False), (2, 8, 5, True), (3, 1, 6, True)]
)
def test_starts_as_the_identity(
    generator: str, batch: int, height: int, width: int, training: bool
) -> None:
    ars = AdaptiveResampling(12, generator=generator).double().train(training)
    x = torch.randn(batch, 12, height, width, dtype=torch.float64)
    out = ars(x)
    assert isinstance(out, Resampled)
    assert torch.equal(out.logits, torch.zeros(batch, 1, height, width, dtype=torch.float64))
    torch.testing.assert_close(out.grid, identity_grid(batch, height, width), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.features, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize(("window", "fwhm", "s_min"), [(5, 3.0, 1e-3), (2, 1.5, 0.1)])
def test_equals_the_reference_ops_on_its_own_logits(
    generator: str, window: int, fwhm: float, s_min: float
) -> None:
    ars = AdaptiveResampling(8, generator=generator, window=window, fwhm=fwhm, s_min=s_min)
    ars = ars.double().eval()
    nudge(ars)
    x = torch.randn(2, 8, 13, 17, dtype=torch.float64)
    out = ars(x)
    torch.testing.assert_close(out.logits, ars.generator(x), rtol=0, atol=0)
    grid = functional.saliency_grid(out.logits, window=window, fwhm=fwhm, s_min=s_min)
    torch.testing.assert_close(out.grid, grid, rtol=0, atol=0)
    torch.testing.assert_close(out.features, functional.resample(x, grid), rtol=0, atol=0)
    assert (out.features - x).abs().max() > 1e-2  # it really warps


def test_gradient_reaches_the_generator_through_the_grid() -> None:
    ars = AdaptiveResampling(8).double()
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    ars(x).features.square().sum().backward()
    # At init only the last layer can learn (it multiplies everything before it by zero).
    assert ars.generator.project.weight.grad.abs().max() > 0
    ars.zero_grad()
    nudge(ars)
    x.requires_grad_(True)
    out = ars(x)
    out.features.square().sum().backward()
    assert x.grad is not None
    for name, parameter in ars.named_parameters():
        if name == "generator.project.bias":
            continue  # a constant shift of the logits cancels in exp(A - max A)
        assert parameter.grad is not None, name
        assert parameter.grad.abs().max() > 0, name


def test_bias_of_the_logits_does_not_change_the_result() -> None:
    ars = AdaptiveResampling(4).double().eval()
    nudge(ars)
    x = torch.randn(1, 4, 7, 9, dtype=torch.float64)
    before = ars(x).features
    with torch.no_grad():
        ars.generator.project.bias.add_(3.0)
    torch.testing.assert_close(ars(x).features, before, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_non_contiguous_input_gives_the_same_result(layout: str) -> None:
    ars = AdaptiveResampling(6).double().eval()
    nudge(ars)
    base = torch.randn(1, 6, 13, 17, dtype=torch.float64)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    else:
        x = base.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x.is_contiguous()
    expected, got = ars(base), ars(x)
    torch.testing.assert_close(got.features, expected.features, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.grid, expected.grid, rtol=0, atol=1e-12)


def test_float32_keeps_the_dtype_and_runs_under_bf16_autocast() -> None:
    ars = AdaptiveResampling(8).eval()
    nudge(ars, 0.1)
    x = torch.randn(2, 8, 9, 10)
    out = ars(x)
    assert out.features.dtype == torch.float32
    assert out.grid.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = ars(x.bfloat16())
    assert half.features.dtype == torch.bfloat16
    assert torch.isfinite(half.features.float()).all()
    assert (half.features.float() - out.features).abs().mean() < 0.05


def test_batch_norm_needs_two_images_to_train_as_in_pspnet() -> None:
    ars = AdaptiveResampling(8).train()
    with pytest.raises(ValueError, match=r"x has batch 1.*2 or more images.*group_norm"):
        ars(torch.randn(1, 8, 5, 6))


def test_bad_inputs_raise_naming_the_argument() -> None:
    ars = AdaptiveResampling(8)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        ars([1.0])
    with pytest.raises(ValueError, match="x must be a 4-D"):
        ars(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match="x must have 8 channels"):
        ars(torch.randn(1, 7, 5, 5))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        ars(torch.ones(1, 8, 5, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must have the module's dtype"):
        ars(torch.randn(1, 8, 5, 5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"channels": 0}, "channels"),
        ({"channels": 8, "window": 0}, "window"),
        ({"channels": 8, "window": 2.5}, "window"),
        ({"channels": 8, "fwhm": -1.0}, "fwhm"),
        ({"channels": 8, "s_min": 0.0}, "s_min"),
        ({"channels": 8, "s_min": 2.0}, "s_min"),
        ({"channels": 8, "generator": "cbam"}, "generator"),
        ({"channels": 8, "backend": "cuda-magic"}, "backend"),
    ],
)
def test_bad_settings_raise_at_construction(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AdaptiveResampling(**kwargs)  # type: ignore[arg-type]


def test_norm_layer_reaches_the_generator() -> None:
    ars = AdaptiveResampling(8, norm_layer=lambda c: nn.GroupNorm(1, c))
    assert any(isinstance(m, nn.GroupNorm) for m in ars.modules())
    out = ars(torch.randn(1, 8, 5, 6))  # batch 1 trains fine without BatchNorm
    assert out.features.shape == (1, 8, 5, 6)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_input_pixel_makes_that_image_nan_and_leaves_the_others(
    generator: str, bad: float
) -> None:
    """The contract of the NaN test in eval mode: training-mode BatchNorm mixes the batch."""
    torch.manual_seed(3)
    ars = AdaptiveResampling(8, generator=generator).eval()
    nudge(ars)
    x = torch.randn(3, 8, 11, 10)
    clean = ars(x)
    broken = x.clone()
    broken[2, 5, 7, 1] = bad
    out = ars(broken)
    assert out.features[2].isnan().all()
    assert out.grid[2].isnan().all()
    for name in ("features", "grid", "logits"):
        assert torch.equal(getattr(out, name)[:2], getattr(clean, name)[:2]), name


def test_a_nan_image_stays_alone_in_training_with_a_per_image_norm() -> None:
    ars = AdaptiveResampling(8, norm_layer=lambda c: nn.GroupNorm(1, c)).train()
    nudge(ars)
    x = torch.randn(2, 8, 9, 9)
    clean = ars(x).features
    broken = x.clone()
    broken[0, 0, 0, 0] = float("nan")
    out = ars(broken).features
    assert out[0].isnan().all()
    assert torch.equal(out[1], clean[1])
