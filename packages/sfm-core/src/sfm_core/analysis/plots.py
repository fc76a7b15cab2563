"""Figures of the analysis: spectra with the Nyquist line, a sampling grid over its image, saliency.

matplotlib is an optional extra (``pip install 'sfm-core[plot]'``), imported on first use. Every
function draws into ``ax=`` when given one (so figures can be composed, with pyplot or without);
otherwise into a new figure on an Agg canvas, without pyplot, so no global backend state is
touched. Every function returns the :class:`~matplotlib.figure.Figure` it drew on and also saves
it when given ``path``. Each plot says what it shows: axis labels and a legend, or a colour bar
whose label names the quantity (attention logits are not saliency).
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import TYPE_CHECKING

import torch

from sfm_core._checks import check_positive, check_tensor
from sfm_core.analysis.spectrum import radial_power_spectrum

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NYQUIST_GID = "nyquist"  # the gid of the Nyquist line, to find it in a figure
GRID_GID = "sampling-grid"  # the gid of the grid's line collection

SavePath = str | PathLike[str] | None
SALIENCY_LABEL = "saliency S = exp(A − max A)"
LOGITS_LABEL = "attention logits A"


def _axes(ax: Axes | None, *, width: float = 4.8, height: float = 3.6) -> Axes:
    """``ax``, or the axes of a new figure of ``width`` x ``height`` inches."""
    if ax is not None:
        return ax
    return _new_figure(width=width, height=height).add_subplot()


def _new_figure(*, width: float = 4.8, height: float = 3.6) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "sfm_core.analysis.plots needs matplotlib: pip install 'sfm-core[plot]'"
        ) from error
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _finish(axes: Axes, title: str | None, path: SavePath) -> Figure:
    figure = _figure_of(axes)
    if title:
        axes.set_title(title)
    if path is not None:
        figure.savefig(path, dpi=150)
    return figure


def _figure_of(axes: Axes) -> Figure:
    """The top-level figure ``axes`` belongs to (also when it sits in a subfigure)."""
    figure = axes.get_figure(root=True)
    assert figure is not None
    return figure


def plot_spectrum(
    maps: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    stride: int = 2,
    bins: int | None = None,
    title: str | None = None,
    path: SavePath = None,
    ax: Axes | None = None,
) -> Figure:
    """Radially averaged power spectra (log power vs cycles/pixel) with the Nyquist line.

    Like the paper's Fig. 1(b): x from 0 to 0.5, a dashed line at ``1/(2 stride)`` and the
    aliasing side shaded. ``maps`` is one map or ``{label: map}``; each map is ``[C, H, W]`` or
    ``[B, C, H, W]`` (spectra averaged over the batch), see :func:`radial_power_spectrum`.
    """
    check_positive("stride", stride, integer=True)
    named = {"feature map": maps} if isinstance(maps, torch.Tensor) else dict(maps)
    if not named:
        raise ValueError("maps must hold at least one feature map")
    axes = _axes(ax)
    for label, features in named.items():
        frequencies, power = radial_power_spectrum(features, bins=bins)
        if power.dim() == 2:
            power = power.mean(0)
        shown = power > 0  # log scale: leave out empty (NaN) and zero rings
        axes.plot(frequencies[shown].cpu().numpy(), power[shown].cpu().numpy(), label=label)
    nyquist = 1.0 / (2 * stride)
    axes.axvline(
        nyquist, color="tab:red", linestyle="--", label=f"Nyquist 1/(2·{stride})", gid=NYQUIST_GID
    )
    axes.axvspan(nyquist, 0.5, color="tab:red", alpha=0.07, linewidth=0)
    axes.set_yscale("log")
    axes.set_xlim(0.0, 0.5)
    axes.set_xlabel("normalized frequency (cycles/pixel)")
    axes.set_ylabel("power (channel mean)")
    axes.legend(loc="best", fontsize="small")
    return _finish(axes, title, path)


def _image_array(image: torch.Tensor, name: str) -> torch.Tensor:
    """``[H, W]`` or ``[H, W, 3]`` in ``[0, 1]`` (min-max scaled) from an image tensor."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() == 3 and image.shape[0] in (1, 3):
        image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    if image.dim() not in (2, 3) or (image.dim() == 3 and image.shape[-1] != 3):
        raise ValueError(
            f"{name} must be [H, W], [C, H, W] or [1, C, H, W] with C = 1 or 3, "
            f"got shape {tuple(image.shape)}"
        )
    data = image.detach().to(torch.float64).cpu()
    low, high = data.min(), data.max()
    return (data - low) / (high - low) if high > low else torch.zeros_like(data)


def _show_image(axes: Axes, image: torch.Tensor) -> None:
    axes.imshow(image.numpy(), cmap="gray" if image.dim() == 2 else None, vmin=0.0, vmax=1.0)
    axes.set_axis_off()


def plot_sampling_grid(
    image: torch.Tensor,
    grid: torch.Tensor,
    *,
    step: int = 4,
    title: str | None = None,
    path: SavePath = None,
    ax: Axes | None = None,
) -> Figure:
    """Where ARS samples: every ``step``-th row and column of ``grid`` drawn over ``image``.

    Args:
        image: ``[H, W]``, ``[C, H, W]`` or ``[1, C, H, W]`` with ``C`` 1 or 3 (min-max scaled).
        grid: ``[h, w, 2]`` or ``[1, h, w, 2]`` in ``grid_sample`` convention
            (``align_corners=False``), as :func:`sfm_core.functional.saliency_grid` returns;
            ``h x w`` need not be the image size (normalized coordinates are shared).
        step: draw every ``step``-th grid line (the last row and column always).
    """
    pixels = _image_array(image, "image")
    if grid.dim() == 4 and grid.shape[0] == 1:
        grid = grid[0]
    check_tensor("grid", grid, ndim=3, shape_hint="[h, w, 2] or [1, h, w, 2]")
    if grid.shape[-1] != 2:
        raise ValueError(f"grid must end in 2 (x, y), got shape {tuple(grid.shape)}")
    check_positive("step", step, integer=True)
    height, width = pixels.shape[:2]
    points = grid.detach().to(torch.float64).cpu()
    # grid value g in [-1, 1] -> pixel coordinate with pixel centres at integers (imshow's).
    x = (points[..., 0] + 1) / 2 * width - 0.5
    y = (points[..., 1] + 1) / 2 * height - 0.5
    xy = torch.stack([x, y], -1)
    rows = sorted({*range(0, xy.shape[0], step), xy.shape[0] - 1})
    cols = sorted({*range(0, xy.shape[1], step), xy.shape[1] - 1})
    lines = [xy[i].numpy() for i in rows] + [xy[:, j].numpy() for j in cols]
    axes = _axes(ax, width=4.8, height=4.8 * height / width)
    from matplotlib.collections import LineCollection  # available once the figure exists

    _show_image(axes, pixels)
    label = "sampling grid" if step == 1 else f"sampling grid (1 line in {step})"
    axes.add_collection(
        LineCollection(lines, colors="cyan", linewidths=0.8, gid=GRID_GID, label=label)
    )
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.legend(loc="upper right", fontsize="small")
    return _finish(axes, title, path)


def plot_saliency(
    values: torch.Tensor,
    *,
    logits: bool = False,
    image: torch.Tensor | None = None,
    alpha: float = 0.5,
    title: str | None = None,
    path: SavePath = None,
    ax: Axes | None = None,
) -> Figure:
    """A saliency map, or the attention logits, with a labelled colour bar; over ``image`` if given.

    ``values`` is ``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]``, shown with its own values. ARS's
    generator outputs attention logits ``A`` (``Resampled.logits``): pass them with
    ``logits=True`` to label them so, or plot the saliency the sampler uses,
    ``torch.exp(A - A.max()).clamp_min(s_min)``, with ``logits=False`` (the default). With
    ``image`` (``[H', W']``, ``[C, H', W']`` or ``[1, C, H', W']``, ``C`` 1 or 3) the map is
    stretched over the whole image and blended on top of it with opacity ``alpha``.
    """
    while values.dim() > 2 and values.shape[0] == 1:
        values = values[0]
    check_tensor("values", values, ndim=2, shape_hint="[H, W], [1, H, W] or [1, 1, H, W]")
    if not isinstance(alpha, int | float) or not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
    shown = values.detach().to(torch.float64).cpu().numpy()
    if image is None:
        axes = _axes(ax)
        mappable = axes.imshow(shown, cmap="magma")
    else:
        pixels = _image_array(image, "image")
        height, width = pixels.shape[:2]
        axes = _axes(ax, width=4.8, height=4.8 * height / width)
        _show_image(axes, pixels.mean(-1) if pixels.dim() == 3 else pixels)
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # the image's pixel edges
        mappable = axes.imshow(shown, cmap="magma", alpha=alpha, extent=extent)
    axes.set_axis_off()
    _figure_of(axes).colorbar(
        mappable, ax=axes, shrink=0.85, label=LOGITS_LABEL if logits else SALIENCY_LABEL
    )
    return _finish(axes, title, path)
