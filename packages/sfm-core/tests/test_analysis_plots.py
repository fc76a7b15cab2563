"""Plots: the figures exist with the right elements (axes, Nyquist line, grid lines), not pixels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sfm_core.analysis.plots import (
    GRID_GID,
    NYQUIST_GID,
    plot_saliency,
    plot_sampling_grid,
    plot_spectrum,
)
from sfm_core.functional import identity_positions, saliency_grid


def identity_grid(height: int, width: int) -> torch.Tensor:
    return identity_positions(1, height, width, dtype=torch.float64)[0].permute(1, 2, 0) * 2 - 1


@pytest.mark.parametrize("stride", [2, 3])
def test_spectrum_has_one_curve_per_map_and_the_nyquist_line(stride: int, tmp_path: Path) -> None:
    maps = {"a": torch.randn(2, 3, 24, 20), "b": torch.randn(4, 24, 24)}
    path = tmp_path / "spectrum.png"
    figure = plot_spectrum(maps, stride=stride, title="spectra", path=path)
    (axes,) = figure.axes
    nyquist = [line for line in axes.get_lines() if line.get_gid() == NYQUIST_GID]
    assert len(nyquist) == 1
    assert list(nyquist[0].get_xdata()) == [pytest.approx(1 / (2 * stride))] * 2
    curves = [line for line in axes.get_lines() if line.get_gid() != NYQUIST_GID]
    assert [line.get_label() for line in curves] == ["a", "b"]
    assert len(curves[0].get_xdata()) == 10  # min(24, 20) // 2 rings
    assert axes.get_yscale() == "log"
    assert axes.get_xlim() == (0.0, 0.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sampling_grid_lines_sit_at_the_grid_positions(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    figure = plot_sampling_grid(
        torch.randn(1, 3, 16, 12), identity_grid(8, 6)[None], step=2, path=path
    )
    (axes,) = figure.axes
    (lines,) = [c for c in axes.collections if c.get_gid() == GRID_GID]
    segments = [torch.from_numpy(segment) for segment in lines.get_segments()]
    assert len(segments) == 5 + 4  # rows 0, 2, 4, 6 and the last (7); columns 0, 2, 4 and 5
    # An 8 x 6 lattice over a 16 x 12 image: lattice point (i, j) is at pixel (2i + .5, 2j + .5).
    expected_x = torch.arange(6, dtype=torch.float64) * 2 + 0.5
    torch.testing.assert_close(segments[0][:, 0], expected_x)
    torch.testing.assert_close(segments[0][:, 1], torch.full((6,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(segments[4][:, 1], torch.full((6,), 14.5, dtype=torch.float64))
    torch.testing.assert_close(segments[-1][:, 0], torch.full((8,), 10.5, dtype=torch.float64))
    assert axes.get_xlim() == (-0.5, 11.5)
    assert axes.get_ylim() == (15.5, -0.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sampling_grid_of_a_real_saliency_grid() -> None:
    logits = torch.randn(1, 1, 20, 20) * 4
    grid = saliency_grid(logits)
    figure = plot_sampling_grid(torch.rand(20, 20), grid, step=1)
    (lines,) = [c for c in figure.axes[0].collections if c.get_gid() == GRID_GID]
    assert len(lines.get_segments()) == 40


def test_saliency_with_and_without_the_image() -> None:
    saliency = torch.rand(1, 1, 9, 11)
    alone = plot_saliency(saliency)
    assert len(alone.axes) == 2  # the map and its colour bar
    shown = alone.axes[0].get_images()[0].get_array()
    torch.testing.assert_close(torch.from_numpy(shown.data), saliency[0, 0].double())
    beside = plot_saliency(saliency[0], image=torch.rand(3, 9, 11), title="s")
    assert len(beside.axes) == 3


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"sfm-core\[plot\]"):
        plot_saliency(torch.rand(4, 4))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: plot_spectrum({}), ValueError, "at least one feature map"),
        (lambda: plot_spectrum(torch.randn(2, 8, 8), stride=0), ValueError, "stride must be"),
        (
            lambda: plot_sampling_grid(torch.rand(2, 8, 8), identity_grid(8, 8)),
            ValueError,
            "C = 1 or 3",
        ),
        (
            lambda: plot_sampling_grid(torch.rand(8, 8), torch.zeros(8, 8, 3)),
            ValueError,
            r"grid must end in 2",
        ),
        (
            lambda: plot_sampling_grid(torch.rand(8, 8), identity_grid(8, 8), step=0),
            ValueError,
            "step must be a positive int",
        ),
        (lambda: plot_saliency(torch.rand(2, 4, 4)), ValueError, "saliency must be a 2-D"),
    ],
)
def test_bad_input(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
