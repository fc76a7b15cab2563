"""radial_power_spectrum: peaks of known signals, the full-plane definition, shapes, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sfm_core.analysis import radial_power_spectrum


def cosine(fx: float, fy: float, size: tuple[int, int]) -> torch.Tensor:
    i = torch.arange(size[0], dtype=torch.float64).view(-1, 1)
    j = torch.arange(size[1], dtype=torch.float64).view(1, -1)
    return torch.cos(2 * math.pi * (fx * j + fy * i) + 0.7)


def naive_spectrum(x: np.ndarray, bins: int) -> np.ndarray:
    """Full-plane FFT, ring of each frequency from its radius, frequency by frequency."""
    _, height, width = x.shape
    centred = x - x.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(centred)) ** 2 / (height * width)).mean(0)
    totals, counts = np.zeros(bins), np.zeros(bins)
    for ky, kx in itertools.product(range(height), range(width)):
        v = (ky if ky < (height + 1) // 2 else ky - height) / height
        u = (kx if kx < (width + 1) // 2 else kx - width) / width
        radius = math.hypot(u, v)
        ring = max(1, math.ceil(2 * bins * radius - 0.5))
        if radius > 0 and ring <= bins:
            totals[ring - 1] += power[ky, kx]
            counts[ring - 1] += 1
    return totals / counts


@pytest.mark.parametrize(
    ("fx", "fy", "peak"), [(0.1, 0.0, 0.1), (0.0, 0.35, 0.35), (0.15, 0.2, 0.25)]
)
def test_a_cosine_peaks_at_its_radial_frequency(fx: float, fy: float, peak: float) -> None:
    frequencies, power = radial_power_spectrum(cosine(fx, fy, (40, 40))[None])
    assert frequencies[power.argmax()].item() == pytest.approx(peak)
    second = power.topk(2).values[1]
    assert second < 1e-20 * power.max()  # on-bin cosines do not leak


@pytest.mark.parametrize(("size", "bins"), [((9, 14), None), ((12, 7), 3), ((10, 10), 5)])
def test_matches_the_full_plane_definition(size: tuple[int, int], bins: int | None) -> None:
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    frequencies, power = radial_power_spectrum(x, bins=bins)
    rings = bins or min(size) // 2
    torch.testing.assert_close(
        frequencies, torch.arange(1, rings + 1, dtype=torch.float64) * 0.5 / rings
    )
    expected = np.stack([naive_spectrum(image.numpy(), rings) for image in x])
    torch.testing.assert_close(power, torch.from_numpy(expected))


def test_shapes_mean_removal_and_empty_rings() -> None:
    x = torch.randn(3, 4, 16, 20)
    frequencies, power = radial_power_spectrum(x)
    assert frequencies.shape == (8,)
    assert power.shape == (3, 8)
    assert power.dtype == torch.float64
    assert (power > 0).all()
    _, single = radial_power_spectrum(x[2] + 5.0)
    torch.testing.assert_close(single, power[2])
    _, fine = radial_power_spectrum(x, bins=40)  # rings narrower than the frequency spacing
    assert fine.isnan().any()
    assert not fine.isnan().all()


def test_constant_map_has_zero_spectrum() -> None:
    _, power = radial_power_spectrum(torch.full((2, 6, 6), 3.0))
    assert (power == 0).all()


@pytest.mark.parametrize(
    ("x", "bins", "error", "match"),
    [
        (torch.randn(1, 2, 8, 8), 0, ValueError, "bins must be a positive int"),
        (torch.randn(1, 2, 8, 8), 2.5, ValueError, "bins must be a positive int"),
        (torch.randn(8, 8), None, ValueError, "x must be a 4-D tensor"),
        (torch.tensor([[[math.inf]]]), None, ValueError, "x must be finite"),
    ],
)
def test_bad_input(x: torch.Tensor, bins: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        radial_power_spectrum(x, bins=bins)  # type: ignore[arg-type]
