"""Plots: the figures exist with the right elements (axes, Nyquist line, grid lines), not pixels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from sfm_core.analysis.plots import (
    GRID_GID,
    LOGITS_LABEL,
    NYQUIST_GID,
    SALIENCY_LABEL,
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


def colorbar_label(figure: Figure) -> str:
    (bar,) = [axes for axes in figure.axes if axes.get_label() == "<colorbar>"]
    return str(bar.get_ylabel())


def test_saliency_alone_shows_its_values_with_a_labelled_colour_bar() -> None:
    saliency = torch.rand(1, 1, 9, 11)
    figure = plot_saliency(saliency)
    assert len(figure.axes) == 2  # the map and its colour bar
    shown = figure.axes[0].get_images()[0].get_array()
    torch.testing.assert_close(torch.from_numpy(shown.data), saliency[0, 0].double())
    assert colorbar_label(figure) == SALIENCY_LABEL


def test_logits_are_labelled_as_logits_not_saliency() -> None:
    figure = plot_saliency(torch.randn(9, 11), logits=True)
    assert colorbar_label(figure) == LOGITS_LABEL
    assert "saliency" not in colorbar_label(figure)


def test_saliency_is_blended_over_the_whole_image(tmp_path: Path) -> None:
    """A 9 x 11 saliency map over a 36 x 44 image: stretched to the image's edges, alpha 0.4."""
    path = tmp_path / "overlay.png"
    figure = plot_saliency(
        torch.rand(9, 11), image=torch.rand(3, 36, 44), alpha=0.4, title="s", path=path
    )
    axes = figure.axes[0]
    background, overlay = axes.get_images()
    assert background.get_array().shape == (36, 44)  # the image, in grey
    assert overlay.get_array().shape == (9, 11)
    assert overlay.get_alpha() == 0.4
    assert overlay.get_extent() == [-0.5, 43.5, 35.5, -0.5]
    assert axes.get_title() == "s"
    assert colorbar_label(figure) == SALIENCY_LABEL
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_plot_draws_into_the_axes_it_is_given(tmp_path: Path) -> None:
    from matplotlib.figure import Figure as MatplotlibFigure

    figure = MatplotlibFigure(figsize=(12, 4))
    left, middle, right = figure.subplots(1, 3)
    image = torch.rand(16, 16)
    assert plot_spectrum(torch.randn(2, 16, 16), ax=left) is figure
    assert plot_sampling_grid(image, identity_grid(8, 8), ax=middle) is figure
    assert (
        plot_saliency(torch.rand(8, 8), image=image, ax=right, path=tmp_path / "all.png") is figure
    )
    assert len(figure.axes) == 4  # the three, plus the saliency's colour bar
    assert any(line.get_gid() == NYQUIST_GID for line in left.get_lines())
    assert [c.get_gid() for c in middle.collections] == [GRID_GID]
    assert len(right.get_images()) == 2
    assert (tmp_path / "all.png").stat().st_size > 0


def test_the_grid_and_the_spectrum_have_legends() -> None:
    grid_figure = plot_sampling_grid(torch.rand(16, 16), identity_grid(8, 8), step=2)
    legend = grid_figure.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["sampling grid (1 line in 2)"]
    spectrum = plot_spectrum({"before ARS": torch.randn(4, 16, 16)}, stride=2).axes[0]
    texts = [text.get_text() for text in spectrum.get_legend().get_texts()]
    assert texts == ["before ARS", "Nyquist 1/(2·2)"]
    assert spectrum.get_xlabel()
    assert spectrum.get_ylabel()


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
        (lambda: plot_saliency(torch.rand(2, 4, 4)), ValueError, "values must be a 2-D"),
        (lambda: plot_saliency(torch.rand(4, 4), alpha=0), ValueError, "alpha must be"),
    ],
)
def test_bad_input(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
