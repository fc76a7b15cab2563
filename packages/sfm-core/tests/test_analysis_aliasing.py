"""aliasing_ratio (METHOD.md §5): known signals, the full-plane definition, options, bad input."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from sfm_core.analysis import aliasing_ratio


def cosine(
    fx: float, fy: float = 0.0, size: tuple[int, int] = (40, 40), phase: float = 0.3
) -> torch.Tensor:
    """``cos(2 pi (fx j + fy i) + phase)`` on an ``H x W`` grid, float64, ``[H, W]``."""
    i = torch.arange(size[0], dtype=torch.float64).view(-1, 1)
    j = torch.arange(size[1], dtype=torch.float64).view(1, -1)
    return torch.cos(2 * math.pi * (fx * j + fy * i) + phase)


def naive_ratio(
    x: np.ndarray, stride: tuple[int, int], spectrum: str, band: str, reduction: str
) -> float:
    """Full-plane FFT, band decided with exact fractions, frequency by frequency."""
    channels, height, width = x.shape
    centred = x - x.mean(axis=(1, 2), keepdims=True)
    density = np.abs(np.fft.fft2(centred)) ** (2 if spectrum == "power" else 1)
    folded, total = np.zeros(channels), np.zeros(channels)
    for ky, kx in itertools.product(range(height), range(width)):
        v = Fraction(ky if ky < (height + 1) // 2 else ky - height, height)
        u = Fraction(kx if kx < (width + 1) // 2 else kx - width, width)
        if band == "square":
            outside = abs(u) > Fraction(1, 2 * stride[1]) or abs(v) > Fraction(1, 2 * stride[0])
        else:
            outside = (u * stride[1]) ** 2 + (v * stride[0]) ** 2 > Fraction(1, 4)
        folded += density[:, ky, kx] * outside
        total += density[:, ky, kx]
    if reduction == "sum":
        return float(folded.sum() / total.sum())
    return float(np.mean(folded / total))


@pytest.mark.parametrize(("fx", "fy"), [(0.1, 0.0), (0.0, 0.1), (0.125, 0.2), (0.225, 0.225)])
def test_a_cosine_below_the_nyquist_line_does_not_alias(fx: float, fy: float) -> None:
    assert float(aliasing_ratio(cosine(fx, fy)[None])) < 1e-12


@pytest.mark.parametrize(("fx", "fy"), [(0.4, 0.0), (0.0, 0.4), (0.1, 0.3), (0.475, 0.45)])
def test_a_cosine_above_the_nyquist_line_is_all_aliasing(fx: float, fy: float) -> None:
    assert float(aliasing_ratio(cosine(fx, fy)[None])) > 1 - 1e-12


@pytest.mark.parametrize(("frequency", "expected"), [(0.15, 0.0), (0.2, 1.0)])
def test_the_nyquist_line_follows_the_stride(frequency: float, expected: float) -> None:
    x = cosine(frequency, size=(60, 60))[None]  # stride 3: line at 1/6
    torch.testing.assert_close(
        aliasing_ratio(x, 3), torch.tensor(expected).double(), atol=1e-12, rtol=0
    )
    assert float(aliasing_ratio(x, 1)) < 1e-12  # stride 1 folds nothing


def test_frequencies_on_the_nyquist_line_are_not_counted() -> None:
    for band in ("square", "radial"):
        on_line = aliasing_ratio(cosine(0.25)[None], band=band)  # bin 10 of 40: exactly 1/4
        assert float(on_line) < 1e-12
        assert float(aliasing_ratio(cosine(0.275)[None], band=band)) > 1 - 1e-12


@pytest.mark.parametrize(("a", "b"), [(1.0, 1.0), (3.0, 1.0), (0.5, 2.0)])
def test_a_mixture_splits_by_power_or_amplitude(a: float, b: float) -> None:
    x = (a * cosine(0.1) + b * cosine(0.0, 0.4, phase=1.1))[None]
    power = aliasing_ratio(x)
    amplitude = aliasing_ratio(x, spectrum="amplitude")
    torch.testing.assert_close(power, torch.tensor(b * b / (a * a + b * b)).double())
    torch.testing.assert_close(amplitude, torch.tensor(b / (a + b)).double())


def test_radial_band_counts_a_diagonal_cosine_that_the_square_band_passes() -> None:
    diagonal = cosine(0.2, 0.2)[None]  # |u|, |v| = 0.2 < 0.25 but radius 0.28 > 0.25
    assert float(aliasing_ratio(diagonal, band="square")) < 1e-12
    assert float(aliasing_ratio(diagonal, band="radial")) > 1 - 1e-12
    inside_disc = cosine(0.15, 0.15)[None]  # radius 0.21
    assert float(aliasing_ratio(inside_disc, band="radial")) < 1e-12


def test_reduction_mean_averages_per_channel_ratios() -> None:
    x = torch.stack([10 * cosine(0.1), cosine(0.4)])
    torch.testing.assert_close(aliasing_ratio(x), torch.tensor(1 / 101).double())
    torch.testing.assert_close(aliasing_ratio(x, reduction="mean"), torch.tensor(0.5).double())


@pytest.mark.parametrize(
    ("stride", "spectrum", "band", "reduction", "size"),
    [
        (2, "power", "square", "sum", (7, 10)),
        (2, "amplitude", "radial", "mean", (12, 9)),
        ((2, 3), "power", "radial", "sum", (11, 12)),
        ((3, 2), "amplitude", "square", "mean", (8, 13)),
        (4, "power", "radial", "mean", (16, 5)),
    ],
)
def test_matches_the_full_plane_definition_on_random_maps(
    stride: int | tuple[int, int], spectrum: str, band: str, reduction: str, size: tuple[int, int]
) -> None:
    x = torch.randn(3, 5, *size, dtype=torch.float64)
    ours = aliasing_ratio(x, stride, spectrum=spectrum, band=band, reduction=reduction)
    pair = stride if isinstance(stride, tuple) else (stride, stride)
    expected = [naive_ratio(image.numpy(), pair, spectrum, band, reduction) for image in x]
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64))


def test_constant_maps_have_zero_ratio_and_no_weight_in_the_mean() -> None:
    assert aliasing_ratio(torch.ones(2, 3, 8, 8)).tolist() == [0.0, 0.0]
    assert float(aliasing_ratio(torch.full((3, 9, 8), 0.1, dtype=torch.float64))) == 0.0
    signal = cosine(0.4) + 0.3 * cosine(0.1)
    mixed = torch.stack([torch.full((40, 40), 7.0, dtype=torch.float64), signal])
    torch.testing.assert_close(
        aliasing_ratio(mixed, reduction="mean"), aliasing_ratio(signal[None])
    )


def test_the_channel_mean_is_removed() -> None:
    x = torch.randn(4, 9, 11, dtype=torch.float64)
    offset = torch.tensor([100.0, -3.0, 0.5, 40.0], dtype=torch.float64).view(-1, 1, 1)
    torch.testing.assert_close(aliasing_ratio(x + offset), aliasing_ratio(x))


def test_batch_single_image_dtypes_and_layout() -> None:
    x = torch.randn(3, 4, 10, 9)
    batch = aliasing_ratio(x)
    assert batch.shape == (3,)
    assert batch.dtype == torch.float64
    assert ((batch > 0) & (batch < 1)).all()
    single = aliasing_ratio(x[1])
    assert single.shape == ()
    torch.testing.assert_close(single, batch[1])
    transposed = x.transpose(2, 3)
    torch.testing.assert_close(aliasing_ratio(transposed), aliasing_ratio(transposed.contiguous()))
    for dtype in (torch.float16, torch.bfloat16):
        low = x.to(dtype)
        torch.testing.assert_close(aliasing_ratio(low), aliasing_ratio(low.double()))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stride": 0}, ValueError, "stride must be a positive int"),
        ({"stride": 1.5}, ValueError, "stride must be a positive int"),
        ({"stride": True}, ValueError, "stride must be a positive int"),
        ({"stride": (2,)}, ValueError, r"stride must be a positive int or a \(sy, sx\) pair"),
        ({"stride": (2, -1)}, ValueError, "stride must be a positive int"),
        ({"spectrum": "energy"}, ValueError, r"spectrum must be one of \['power', 'amplitude'\]"),
        ({"band": "disc"}, ValueError, "band must be one of"),
        ({"reduction": "max"}, ValueError, "reduction must be one of"),
        ({"x": torch.randn(8, 8)}, ValueError, r"x must be a 4-D tensor \[B, C, H, W\] or"),
        ({"x": torch.randn(1, 1, 1, 8, 8)}, ValueError, "x must be a 4-D tensor"),
        ({"x": torch.ones(1, 2, 8, 8, dtype=torch.int64)}, TypeError, "floating dtype"),
        ({"x": torch.ones(1, 0, 8, 8)}, ValueError, "C, H, W >= 1"),
        ({"x": torch.tensor([[[1.0, math.nan]]])}, ValueError, "x must be finite"),
        ({"x": [[[1.0]]]}, TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_input(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    arguments: dict[str, object] = {"x": torch.randn(1, 2, 8, 8), **kwargs}
    with pytest.raises(error, match=match):
        aliasing_ratio(**arguments)  # type: ignore[arg-type]
