"""Is ARS modulating? How far its samples move, how much it zooms on detail, how peaked it is.

:func:`ars_diagnostics` summarises one ARS on one batch from what the module returns (its grid
and logits) and, optionally, a ground-truth *detail* mask in the image (:func:`label_detail`:
pixels near a label boundary, which covers thin structures whole). Training logs it as metrics;
the demo reports it. All of it is bookkeeping: no gradient, float32 or wider.

Definitions (the grid ``g`` ``[B, H, W, 2]`` maps each output pixel to a point of the ARS input
map, in the ``grid_sample`` convention; pixel units are those of that map):

* displacement: distance in pixels between a sample's point and the pixel centre it replaces;
* magnification of a region: samples per unit area of the input map there, relative to the
  uniform lattice (1 = no zoom, 2 = twice the samples). Each sample's cell area is the
  Jacobian determinant of ``g`` in pixels (central differences), and a region's magnification
  is its number of samples over the summed area of their cells: exactly 1 for the identity;
* saliency contrast: mean saliency ``exp(A − max A)`` over detail pixels of the input lattice
  divided by its mean over the other pixels (1 when the logits are constant).

Detail is looked up in the image: a sample's image position is its grid point composed with
the positions of the ARS input map (``input_positions``; the identity for a uniform map, as in
front of the first ARS). A sample counts as on detail when detail lies within half a map pixel
of it (the mask is max-pooled over an odd window of about one map pixel, in mask pixels, then
read at the nearest mask pixel): a 1 px line in a 4× finer mask would otherwise fall between
the samples of a uniform lattice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from sfm_core._checks import check_tensor
from sfm_core.functional.positions import check_positions, compose_positions, identity_positions
from sfm_core.functional.resample import check_grid
from sfm_core.nn.edge_loss import label_boundaries


@dataclass(frozen=True)
class ArsDiagnostics:
    """One ARS on one batch (see the module doc). NaN where a region is empty or not given."""

    displacement_mean: float  # px of the ARS input map, over every sample
    displacement_max: float
    displacement_detail: float  # mean over samples whose image position lies on detail
    magnification_detail: float  # samples per unit area over detail, relative to uniform
    magnification_background: float  # the same over the rest of the map
    saliency_contrast: float  # mean saliency on detail / mean saliency elsewhere

    def as_dict(self) -> dict[str, float]:
        """``{field: value}``, e.g. for a metrics writer."""
        return asdict(self)


def label_detail(labels: torch.Tensor, *, ignore_index: int = 255, radius: int = 1) -> torch.Tensor:
    """Ground-truth detail ``[B, H, W]`` (bool): valid pixels within ``radius`` of a boundary.

    Boundaries as the edge-guidance loss finds them (a valid pixel with a valid 4-neighbour of
    another label); the square dilation by ``radius`` (default 1) marks every pixel of a 1–3 px
    thin structure, not only its rim. ``labels`` ``[B, H, W]`` of an integer dtype.
    """
    check_tensor("labels", labels, ndim=3, floating=False, shape_hint="[B, H, W]")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be an int >= 0, got {radius!r}")
    valid = labels != ignore_index
    edge = label_boundaries(labels, valid)
    if radius:
        size = 2 * radius + 1
        edge = F.max_pool2d(edge[:, None].float(), size, stride=1, padding=radius)[:, 0] > 0
    return edge & valid


@torch.no_grad()
def ars_diagnostics(
    grid: torch.Tensor,
    logits: torch.Tensor | None = None,
    detail: torch.Tensor | None = None,
    input_positions: torch.Tensor | None = None,
) -> ArsDiagnostics:
    """Displacement, magnification over detail and background, and saliency contrast of one ARS.

    Args:
        grid: the ARS sampling grid ``[B, H, W, 2]`` (:attr:`Resampled.grid`).
        logits: its attention logits ``[B, 1, H, W]`` (:attr:`Resampled.logits`); without them
            the saliency contrast is NaN.
        detail: bool mask ``[B, Hd, Wd]`` of ground-truth detail in the image, at any resolution
            (e.g. :func:`label_detail` of the full-resolution labels; the module doc says how it
            is read); without it the detail and background entries are NaN
            (``displacement_mean``/``max`` need only the grid).
        input_positions: image positions ``[B, 2, H, W]`` of the ARS input map (the backbone's
            composite positions); None for a uniform input map.

    Returns:
        :class:`ArsDiagnostics` (Python floats).
    """
    check_grid(grid)
    batch, height, width = grid.shape[:3]
    dtype = torch.promote_types(grid.dtype, torch.float32)
    g = grid.to(dtype)
    # Sample points in pixels of the input map; the identity lattice is j, i.
    px = (g[..., 0] + 1) * (width / 2) - 0.5
    py = (g[..., 1] + 1) * (height / 2) - 0.5
    ys = torch.arange(height, device=g.device, dtype=dtype).view(1, -1, 1)
    xs = torch.arange(width, device=g.device, dtype=dtype).view(1, 1, -1)
    moved = torch.hypot(px - xs, py - ys)
    area = _cell_area(px, py)

    nan = math.nan
    on_detail = off_detail = None
    saliency_on = saliency_off = None
    if detail is not None:
        check_tensor("detail", detail, ndim=3, floating=False, shape_hint="[B, Hd, Wd]")
        if detail.dtype != torch.bool:
            raise TypeError(f"detail must be a bool mask, got {detail.dtype}")
        if detail.shape[0] != batch:
            raise ValueError(f"detail must have the grid's batch {batch}, got {detail.shape[0]}")
        if input_positions is None:
            input_positions = identity_positions(batch, height, width, device=g.device, dtype=dtype)
        check_positions(input_positions, "input_positions")
        if tuple(input_positions.shape[-2:]) != (height, width):
            raise ValueError(
                f"input_positions must be [B, 2, {height}, {width}] like the grid, "
                f"got {tuple(input_positions.shape)}"
            )
        near = _near_detail(detail, height, width)
        samples = compose_positions(input_positions.to(dtype), g)
        on_detail = _lookup(near, samples)
        off_detail = ~on_detail
        if logits is not None:
            saliency_on = _lookup(near, input_positions.to(dtype))
            saliency_off = ~saliency_on

    contrast = nan
    if logits is not None:
        check_tensor("logits", logits, ndim=4, shape_hint="[B, 1, H, W]")
        if tuple(logits.shape) != (batch, 1, height, width):
            raise ValueError(
                f"logits must be [{batch}, 1, {height}, {width}] like the grid, "
                f"got {tuple(logits.shape)}"
            )
        if saliency_on is not None and saliency_off is not None:
            a = logits[:, 0].to(dtype)
            saliency = torch.exp(a - a.amax(dim=(1, 2), keepdim=True))
            contrast = _ratio(_mean(saliency, saliency_on), _mean(saliency, saliency_off))

    return ArsDiagnostics(
        displacement_mean=float(moved.mean()),
        displacement_max=float(moved.amax()),
        displacement_detail=nan if on_detail is None else _mean(moved, on_detail),
        magnification_detail=nan if on_detail is None else _magnification(area, on_detail),
        magnification_background=nan if off_detail is None else _magnification(area, off_detail),
        saliency_contrast=contrast,
    )


def _cell_area(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """|Jacobian determinant| of the sample points per output pixel ``[B, H, W]`` (px²)."""
    if px.shape[-2] < 2 or px.shape[-1] < 2:
        return torch.ones_like(px)  # a single row or column has no area: count it as uniform
    dx_i, dx_j = torch.gradient(px, dim=(1, 2))
    dy_i, dy_j = torch.gradient(py, dim=(1, 2))
    return (dx_j * dy_i - dx_i * dy_j).abs()


def _near_detail(detail: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``detail`` max-pooled over about one pixel of a ``height × width`` map (odd window)."""
    window_y = 2 * (detail.shape[-2] // height // 2) + 1
    window_x = 2 * (detail.shape[-1] // width // 2) + 1
    if window_y == window_x == 1:
        return detail
    pooled = F.max_pool2d(
        detail[:, None].to(torch.float32),
        (window_y, window_x),
        stride=1,
        padding=(window_y // 2, window_x // 2),
    )
    return pooled[:, 0] > 0


def _lookup(mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``mask`` ``[B, Hd, Wd]`` at the nearest pixel of each position ``[B, 2, H, W]``."""
    height, width = mask.shape[-2:]
    cols = (positions[:, 0] * width).floor().long().clamp(0, width - 1)
    rows = (positions[:, 1] * height).floor().long().clamp(0, height - 1)
    index = rows * width + cols
    return mask.flatten(1).gather(1, index.flatten(1)).view_as(index)


def _mean(values: torch.Tensor, where: torch.Tensor) -> float:
    count = int(where.sum())
    return float(values[where].sum() / count) if count else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


def _magnification(area: torch.Tensor, where: torch.Tensor) -> float:
    """Samples over the summed area of their cells (1 for a uniform lattice)."""
    count = int(where.sum())
    return _ratio(float(count), float(area[where].sum())) if count else math.nan
