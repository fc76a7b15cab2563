"""The demo's PNGs: predictions beside the ground truth, ARS grids and saliency, spectra.

Grids, saliency and spectra are drawn by :mod:`sfm_core.analysis.plots`; this module picks what
to draw and writes the files. matplotlib is needed (``sfm-core[plot]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sfm_core.analysis.plots import plot_saliency, plot_sampling_grid, plot_spectrum
from sfm_d2.demo.internals import ArsView
from sfm_d2.demo.models import Sample

IGNORE_COLOR = (0, 0, 0)


def colorize(labels: torch.Tensor, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of a label map; ids outside the palette (ignore) are black."""
    palette = np.array([*colors, IGNORE_COLOR], dtype=np.uint8)
    ids = labels.numpy().astype(np.int64)
    ids = np.where((ids >= 0) & (ids < len(colors)), ids, len(colors))
    return palette[ids]


def _as_rgb(image: torch.Tensor, image_format: str) -> np.ndarray:
    pixels = image.permute(1, 2, 0).numpy()
    return pixels[..., ::-1] if image_format == "BGR" else pixels


def plot_predictions(
    samples: Sequence[Sample],
    predictions: Mapping[str, Sequence[torch.Tensor]],
    *,
    classes: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    path: str | Path,
    image_format: str = "RGB",
) -> Path:
    """One row per sample: the image, its ground truth, then each model's prediction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not samples:
        raise ValueError("samples must hold at least one image")
    for name, labels in predictions.items():
        if len(labels) != len(samples):
            raise ValueError(
                f"predictions[{name!r}] has {len(labels)} maps for {len(samples)} samples"
            )
    titles = ["image", "ground truth", *predictions]
    figure = Figure(figsize=(2.2 * len(titles), 2.2 * len(samples) + 0.9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(samples), len(titles), squeeze=False)
    for row, sample in enumerate(samples):
        panels = [_as_rgb(sample.image, image_format)]
        gt = sample.labels if sample.labels is not None else torch.full(sample.image.shape[1:], -1)
        panels.append(colorize(gt, colors))
        panels += [colorize(labels[row], colors) for labels in predictions.values()]
        for column, panel in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(panel, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize="medium")
        axes[row][0].set_ylabel(sample.name, fontsize="small")
    handles = [
        Patch(color=np.array(c) / 255, label=n) for n, c in zip(classes, colors, strict=True)
    ]
    handles.append(Patch(color=np.array(IGNORE_COLOR) / 255, label="ignore"))
    figure.legend(handles=handles, loc="outside lower center", ncols=5, fontsize="small")
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_ars_views(
    image: torch.Tensor,
    views: Sequence[ArsView],
    folder: Path,
    *,
    prefix: str = "",
    image_format: str = "RGB",
) -> list[Path]:
    """``<prefix>sampling_grid_<stage>.png`` and ``<prefix>saliency_<stage>.png`` per ARS.

    ``views`` are of a batch whose first image is ``image``; only that image is drawn.
    """
    rgb = torch.from_numpy(np.ascontiguousarray(_as_rgb(image, image_format))).permute(2, 0, 1)
    written = []
    for view in views:
        grid_path = folder / f"{prefix}sampling_grid_{view.stage}.png"
        height = view.positions.shape[1]
        plot_sampling_grid(
            rgb.float(),
            view.positions[0],
            step=max(1, height // 32),
            title=f"where the ARS before {view.stage} samples the image ({height}x{view.positions.shape[2]})",
            path=grid_path,
        )
        saliency_path = folder / f"{prefix}saliency_{view.stage}.png"
        plot_saliency(
            view.saliency[0],
            image=rgb.float(),
            title=f"ARS saliency before {view.stage}",
            path=saliency_path,
        )
        written += [grid_path, saliency_path]
    return written


def plot_spectra(
    inputs: Mapping[str, Mapping[str, torch.Tensor]], folder: Path, strides: Mapping[str, int]
) -> list[Path]:
    """``spectrum_<layer>.png``: each model's input to a downsampling layer, with its Nyquist line.

    ``inputs`` is ``{model: {layer: [B, C, H, W]}}``; layers missing from a model are skipped.
    """
    layers = [name for name in strides if all(name in maps for maps in inputs.values())]
    written = []
    for layer in layers:
        path = folder / f"spectrum_{layer.replace('.', '_')}.png"
        plot_spectrum(
            {model: maps[layer].double() for model, maps in inputs.items()},
            stride=strides[layer],
            title=f"power spectrum entering {layer}",
            path=path,
        )
        written.append(path)
    return written
