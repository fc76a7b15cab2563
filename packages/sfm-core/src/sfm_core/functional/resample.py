"""Bilinear resampling of a feature map at a grid (SPEC section 1, step 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfm_core._checks import check_same_batch, check_same_device, check_tensor


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

    Exactly ``F.grid_sample(x, grid, "bilinear", "border", False)``, computed in the wider of the
    two dtypes (so a float32 grid keeps its precision for half features) and returned in
    ``x.dtype``. ``x`` is ``[B, C, H, W]``, ``grid`` ``[B, Ho, Wo, 2]``; the result is
    ``[B, C, Ho, Wo]``.
    """
    check_tensor("x", x, ndim=4, shape_hint="[B, C, H, W]")
    check_grid(grid)
    check_same_device(x=x, grid=grid)
    check_same_batch(x=x, grid=grid)
    dtype = torch.promote_types(x.dtype, grid.dtype)
    out = F.grid_sample(
        x.to(dtype), grid.to(dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.to(x.dtype)
