"""LowPass: the fixed binomial blur of the BlurPool-style comparison arm."""

from __future__ import annotations

import math

import pytest
import torch

from sfm_core.analysis import aliasing_ratio
from sfm_core.nn import LowPass


def test_interior_is_the_binomial_filter_and_constants_pass() -> None:
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    y = LowPass().double()(x)
    assert y.shape == x.shape
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) / 4
    expected = sum(
        taps[a] * taps[b] * x[..., a : a + 7, b : b + 9] for a in range(3) for b in range(3)
    )
    torch.testing.assert_close(y[..., 1:-1, 1:-1], expected)
    constant = torch.full((1, 2, 5, 5), 3.5)
    torch.testing.assert_close(LowPass(5)(constant), constant)  # reflect padding: no dark rim


def test_it_removes_what_a_stride_two_layer_would_fold() -> None:
    j = torch.arange(32, dtype=torch.float64)
    fine = torch.cos(2 * math.pi * 0.4375 * j).expand(1, 1, 32, 32).contiguous()
    blurred = LowPass()(fine.float()).double()
    # [1, 2, 1] / 4 has gain cos^2(pi f): 0.038 at f = 0.4375, so power drops ~700x
    assert blurred[..., 4:-4, 4:-4].abs().max() < 0.05
    noise = torch.randn(4, 3, 32, 32)
    assert aliasing_ratio(LowPass()(noise), 2).mean() < 0.5 * aliasing_ratio(noise, 2).mean()


def test_no_parameters_and_no_checkpoint_entries() -> None:
    module = LowPass()
    assert list(module.parameters()) == []
    assert module.state_dict() == {}


def test_gradcheck() -> None:
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LowPass().double(), (x,))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="size must be 3 or 5"):
        LowPass(4)
    with pytest.raises(ValueError, match="x must be a 4-D tensor"):
        LowPass()(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        LowPass()(torch.zeros(1, 1, 4, 4, dtype=torch.int64))
