"""Bilinear resampling of a feature map at a grid (METHOD.md §1, step 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.jit._trace import is_tracing

from sfm_core._checks import (
    check_nonempty_map,
    check_same_batch,
    check_same_device,
    check_tensor,
)


def check_grid(grid: torch.Tensor, name: str = "grid") -> torch.Tensor:
    """Raise unless ``grid`` is a floating ``[B, H, W, 2]`` tensor."""
    check_tensor(name, grid, ndim=4, shape_hint="[B, H, W, 2]")
    if grid.shape[-1] != 2:
        raise ValueError(
            f"{name} must end in 2 (x, y) ([B, H, W, 2]), got shape {tuple(grid.shape)}"
        )
    return grid


def resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at ``grid``: bilinear, border padding, ``align_corners=False``.

    Exactly ``F.grid_sample(x, grid, "bilinear", "border", False)`` where the grid is finite,
    computed in the wider of the two dtypes (so a float32 grid keeps its precision for half
    features) and returned in ``x.dtype``. A grid point with a non-finite coordinate samples NaN
    in every channel (``grid_sample`` would clamp it to a border pixel: a finite value that hides
    the fault) and passes no gradient. ``x`` is ``[B, C, H, W]``, ``grid`` ``[B, Ho, Wo, 2]``;
    the result is ``[B, C, Ho, Wo]``. ``B``, ``C``, ``Ho`` or ``Wo`` of 0 give an empty result;
    ``x`` needs ``H, W >= 1`` (there is nothing to sample otherwise).
    """
    check_tensor("x", x, ndim=4, shape_hint="[B, C, H, W]")
    check_nonempty_map("x", x, "([B, C, H, W])")
    check_grid(grid)
    check_same_device(x=x, grid=grid)
    check_same_batch(x=x, grid=grid)
    dtype = torch.promote_types(x.dtype, grid.dtype)
    finite = torch.isfinite(grid).all(dim=-1, keepdim=True)
    safe = torch.where(finite, grid, torch.zeros_like(grid))
    out = F.grid_sample(
        x.to(dtype), safe.to(dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    # The mask costs a pass over the output: skipped in eager mode when the grid is all finite
    # (a host sync; traced and compiled graphs always apply it, they cannot branch on data).
    if is_tracing() or torch.compiler.is_compiling() or not bool(finite.all()):
        out = out.masked_fill_(~finite.view(out.shape[0], 1, *out.shape[2:]), float("nan"))
    return out.to(x.dtype)
