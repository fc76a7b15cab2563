"""Attention generators of ARS (METHOD.md §1, step 1): formula, zero initialisation, parameter count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfm_core.nn import (
    GENERATORS,
    LearnableHighPass,
    PyramidAttention,
    build_attention_generator,
)
from sfm_core.nn.generators import BoxAverage


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomize(module: nn.Module) -> None:
    """Random weights everywhere and random BN statistics: no parameter keeps its initial value."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.running_mean.copy_(torch.randn_like(sub.running_mean))
                sub.running_var.copy_(torch.rand_like(sub.running_var) + 0.5)


@pytest.mark.parametrize("channels", [4, 8, 12, 96])
def test_default_generator_has_c_squared_plus_13c_plus_1_parameters(channels: int) -> None:
    generator = build_attention_generator("avg-lhpf-psp", channels)
    assert count(generator) == channels**2 + 13 * channels + 1


@pytest.mark.parametrize("channels", [4, 12])
def test_alternative_generators_parameter_counts(channels: int) -> None:
    assert count(build_attention_generator("avg-psp", channels)) == channels**2 + 4 * channels + 1
    assert count(build_attention_generator("conv", channels)) == 9 * channels + 1


@pytest.mark.parametrize("channels", [1, 6, 13])
def test_channels_not_divisible_by_four_use_ceil_reduced_branches(channels: int) -> None:
    reduced = math.ceil(channels / 4)
    generator = build_attention_generator("avg-lhpf-psp", channels)
    branches = 4 * (channels * reduced + 2 * reduced)
    assert count(generator) == 9 * channels + branches + channels + 4 * reduced + 1
    out = generator(torch.randn(2, channels, 5, 7))
    assert out.shape == (2, 1, 5, 7)


@pytest.mark.parametrize("name", GENERATORS)
def test_logits_start_at_exactly_zero(name: str) -> None:
    generator = build_attention_generator(name, 12)
    logits = generator(torch.randn(2, 12, 13, 17))
    assert logits.shape == (2, 1, 13, 17)
    assert torch.equal(logits, torch.zeros_like(logits))


def test_learnable_high_pass_is_twice_x_minus_a_softmax_weighted_neighbourhood() -> None:
    torch.manual_seed(1)
    high_pass = LearnableHighPass(3).double()
    with torch.no_grad():
        high_pass.weight.copy_(torch.randn(3, 9, dtype=torch.float64))
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    weights = torch.softmax(high_pass.weight, dim=1)
    padded = F.pad(x, (1, 1, 1, 1))  # zero padding
    expected = 2 * x
    for tap in range(9):
        dy, dx = tap // 3, tap % 3
        expected = (
            expected - weights[:, tap].view(1, 3, 1, 1) * padded[:, :, dy : dy + 5, dx : dx + 6]
        )
    torch.testing.assert_close(high_pass(x), expected, rtol=0, atol=1e-12)


def test_learnable_high_pass_initial_kernel_passes_constants_inside_and_boosts_a_spike() -> None:
    high_pass = LearnableHighPass(2).double()
    constant = torch.full((1, 2, 5, 5), 3.0, dtype=torch.float64)
    torch.testing.assert_close(high_pass(constant)[..., 1:-1, 1:-1], constant[..., 1:-1, 1:-1])
    spike = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    spike[..., 2, 2] = 1.0
    centre = 1.0 / (8.0 * math.e + 1.0)  # softmax of [1,1,1,1,0,1,1,1,1] at the centre
    torch.testing.assert_close(high_pass(spike)[0, 0, 2, 2].item(), 2.0 - centre)
    torch.testing.assert_close(high_pass(spike)[0, 0, 1, 2].item(), -math.e * centre)


@pytest.mark.parametrize("high_pass", [True, False])
def test_pyramid_attention_matches_its_definition(high_pass: bool) -> None:
    channels, height, width = 8, 9, 11
    generator = PyramidAttention(channels, high_pass=high_pass).double().eval()
    randomize(generator)
    x = torch.randn(2, channels, height, width, dtype=torch.float64)

    y = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if high_pass:
        lowpass = torch.softmax(generator.high_pass.weight, dim=1).view(channels, 1, 3, 3)
        y = 2 * y - F.conv2d(y, lowpass, padding=1, groups=channels)
    maps = [y]
    for bins, branch in zip((1, 2, 3, 7), generator.context.branches, strict=True):
        conv, norm = branch[1], branch[2]
        z = F.conv2d(F.adaptive_avg_pool2d(y, bins), conv.weight)
        z = F.batch_norm(
            z, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps
        )
        z = F.interpolate(z.relu(), size=(height, width), mode="bilinear", align_corners=False)
        maps.append(z)
    expected = F.conv2d(torch.cat(maps, 1), generator.project.weight, generator.project.bias)
    torch.testing.assert_close(generator(x), expected, rtol=0, atol=1e-10)


def test_norm_layer_is_used_for_the_pyramid_branches() -> None:
    generator = build_attention_generator("avg-lhpf-psp", 8, lambda c: nn.GroupNorm(1, c))
    assert sum(isinstance(m, nn.GroupNorm) for m in generator.modules()) == 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in generator.modules())


def test_bad_arguments_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="generator"):
        build_attention_generator("laplacian", 8)
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="channels"):
            build_attention_generator("avg-lhpf-psp", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(2, 5, 1, 1), (1, 3, 1, 6), (2, 4, 2, 3), (2, 16, 19, 23)])
def test_box_average_is_average_pooling_without_the_padding(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    expected = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    torch.testing.assert_close(BoxAverage()(x), expected, rtol=0, atol=1e-6)


def test_pyramid_attention_in_float32_is_its_definition_within_rounding() -> None:
    """The projection is pushed inside the pyramid branches: same logits up to fp32 rounding."""
    torch.manual_seed(2)
    generator = PyramidAttention(24).eval()
    randomize(generator)
    x = torch.randn(2, 24, 17, 15)
    y = generator.high_pass(generator.smooth(x))
    expected = generator.project(generator.context(y))
    torch.testing.assert_close(generator(x), expected, rtol=1e-5, atol=1e-5)
