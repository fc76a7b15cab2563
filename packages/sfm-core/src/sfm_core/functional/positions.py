"""Composite positions: where each feature pixel sits in the input image (METHOD.md §2).

Positions are ``[B, 2, h, w]`` tensors of normalized image coordinates ``(x, y)`` in ``(0, 1)``
(pixel ``j`` of a ``W``-wide image has ``x = (j + 0.5) / W``). They are bookkeeping, not learned:
every function here returns a detached tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfm_core._checks import (
    MAX_INT,
    check_nonempty_map,
    check_positive,
    check_same_batch,
    check_same_device,
    check_size,
    check_tensor,
    compute_dtype,
)
from sfm_core.functional.resample import check_grid


def check_positions(positions: torch.Tensor, name: str = "positions") -> torch.Tensor:
    """Raise unless ``positions`` is a floating ``[B, 2, h, w]`` tensor."""
    check_tensor(name, positions, ndim=4, shape_hint="[B, 2, h, w]")
    if positions.shape[1] != 2:
        raise ValueError(
            f"{name} must have 2 channels (x, y) ([B, 2, h, w]), got shape {tuple(positions.shape)}"
        )
    check_nonempty_map(name, positions, "([B, 2, h, w])")
    return positions


def finest_lattice(dtype: torch.dtype) -> int:
    """The widest lattice whose pixel centres ``(j + 0.5) / W`` stay distinct in ``dtype``.

    Centres lie in ``(0, 1)``, where the spacing of ``dtype`` is at most ``eps / 2``: 2048 for
    float16, 256 for bfloat16 (wider lattices would have coincident points, hence degenerate
    triangles in :func:`~sfm_core.functional.rasterize`).
    """
    return int(2 / torch.finfo(dtype).eps)


def identity_positions(
    batch: int,
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Positions of a uniform ``height x width`` lattice: pixel centres, ``[batch, 2, h, w]``.

    ``batch`` 0 gives an empty ``[0, 2, h, w]``. A lattice too fine for a half-precision ``dtype``
    (see :func:`finest_lattice`) is refused: its points would coincide.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or not 0 <= batch <= MAX_INT:
        raise ValueError(f"batch must be an int in [0, {MAX_INT}], got {batch!r}")
    check_positive("height", height, integer=True)
    check_positive("width", width, integer=True)
    dtype = dtype or torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if max(height, width) > finest_lattice(dtype):
        raise ValueError(
            f"a {height}x{width} lattice is too fine for {dtype} positions (at most "
            f"{finest_lattice(dtype)} per side keeps pixel centres distinct); use float32"
        )
    # Computed in float32 at least: (j + 0.5) in float16 overflows past 65504.
    wide = compute_dtype(dtype)
    xs = ((torch.arange(width, device=device, dtype=wide) + 0.5) / width).to(dtype)
    ys = ((torch.arange(height, device=device, dtype=wide) + 0.5) / height).to(dtype)
    grid = torch.stack([xs.view(1, -1).expand(height, width), ys.view(-1, 1).expand(height, width)])
    return grid.unsqueeze(0).expand(batch, 2, height, width).contiguous()


def resize_positions(positions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Positions after a layer that changes the map to ``size``: bilinear, ``align_corners=False``."""
    check_positions(positions)
    height, width = check_size("size", size)
    if positions.shape[-2:] == (height, width):
        return positions.detach()
    return F.interpolate(
        positions.detach(), size=(height, width), mode="bilinear", align_corners=False
    )


def compose_positions(positions: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Positions after an ARS with sampling ``grid`` ``[B, H, W, 2]``: ``[B, 2, H, W]``.

    ``positions`` is first resized to the grid's ``H x W``, then sampled at the grid (bilinear,
    border padding), which composes the warps.
    """
    check_positions(positions)
    check_grid(grid)
    check_nonempty_map("grid", grid.movedim(-1, 1), "([B, H, W, 2])")
    check_same_device(positions=positions, grid=grid)
    check_same_batch(positions=positions, grid=grid)
    height, width = int(grid.shape[1]), int(grid.shape[2])
    resized = resize_positions(positions, (height, width))
    dtype = torch.promote_types(resized.dtype, grid.dtype)
    composed = F.grid_sample(
        resized.to(dtype),
        grid.detach().to(dtype),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return composed.to(positions.dtype)
