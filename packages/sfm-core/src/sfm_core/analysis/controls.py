"""Grid controls for the aliasing report: is a drop in aliasing modulation, or interpolation blur?

ARS resamples its input bilinearly. Any resampling off the pixel centres averages neighbours, a
low-pass that lowers the aliasing ratio whether or not the grid follows the image's detail. So the
model's own grid is compared with grids that resample just as much but carry no information about
the image:

* ``"own"``: the grid ARS computed for this image (what the model does);
* ``"other"``: the grid ARS computed for *another* image of the batch (the batch rolled by one),
  a modulation of the right statistics in the wrong places;
* ``"shift"``: a uniform shift of every sample by ``shift`` pixels along x and y (default half a
  pixel: the strongest bilinear averaging, a ``[1, 1] / 2`` filter on each axis);
* ``"identity"``: no resampling at all (the pixel centres), the map as it enters ARS.

Own below other and shift means the grid's placement matters; own equal to them means the drop
is blur. A control replaces the output of every :class:`~sfm_core.nn.AdaptiveResampling` of the
model (its features and grid; the logits stay), so later levels follow the control's positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from sfm_core import ops
from sfm_core.nn.ars import AdaptiveResampling, Resampled

CONTROLS = ("own", "other", "shift", "identity")


def check_control(control: object) -> str:
    """``control`` if it is one of :data:`CONTROLS`, else a ValueError naming the argument."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {list(CONTROLS)}, got {control!r}")
    return str(control)


def check_shift(shift: object) -> float:
    """``shift`` (pixels) if it is a finite number in (-1, 1) other than 0."""
    if (
        isinstance(shift, bool)
        or not isinstance(shift, (int, float))
        or not math.isfinite(shift)
        or not 0 < abs(shift) < 1
    ):
        raise ValueError(f"shift must be a number of pixels in (-1, 1) other than 0, got {shift!r}")
    return float(shift)


def shifted_grid(grid: torch.Tensor, shift: float) -> torch.Tensor:
    """The identity grid of ``grid``'s ``[B, H, W, 2]`` shape moved by ``shift`` px along x and y.

    Samples stay between the first and last pixel centres (as ARS clamps its grid); beyond them
    ``grid_sample``'s border padding would give the same values anyway.
    """
    batch, height, width, _ = grid.shape
    dtype = torch.promote_types(grid.dtype, torch.float32)
    xs = (2 * (torch.arange(width, device=grid.device, dtype=dtype) + 0.5 + shift)) / width - 1
    ys = (2 * (torch.arange(height, device=grid.device, dtype=dtype) + 0.5 + shift)) / height - 1
    xs = xs.clamp(-1 + 1 / width, 1 - 1 / width)
    ys = ys.clamp(-1 + 1 / height, 1 - 1 / height)
    lattice = torch.stack(
        [xs.view(1, -1).expand(height, width), ys.view(-1, 1).expand(height, width)], dim=-1
    )
    return lattice.to(grid.dtype).unsqueeze(0).expand(batch, height, width, 2).contiguous()


def identity_grid(grid: torch.Tensor) -> torch.Tensor:
    """The pixel-centre grid of ``grid``'s shape (bilinear sampling there returns the input)."""
    batch, height, width, _ = grid.shape
    dtype = torch.promote_types(grid.dtype, torch.float32)
    xs = (2 * torch.arange(width, device=grid.device, dtype=dtype) + 1) / width - 1
    ys = (2 * torch.arange(height, device=grid.device, dtype=dtype) + 1) / height - 1
    lattice = torch.stack(
        [xs.view(1, -1).expand(height, width), ys.view(-1, 1).expand(height, width)], dim=-1
    )
    return lattice.to(grid.dtype).unsqueeze(0).expand(batch, height, width, 2).contiguous()


def control_grid(grid: torch.Tensor, control: str, shift: float = 0.5) -> torch.Tensor:
    """The grid that ``control`` puts in place of ARS's own ``grid`` ``[B, H, W, 2]``."""
    control = check_control(control)
    if control == "own":
        return grid
    if control == "other":
        if grid.shape[0] < 2:
            raise ValueError(
                "the 'other' control needs batches of at least 2 images (it gives each image "
                f"the grid of the next one), got a batch of {grid.shape[0]}"
            )
        return grid.roll(1, dims=0)
    if control == "shift":
        return shifted_grid(grid, check_shift(shift))
    return identity_grid(grid)


def resampling_modules(model: nn.Module) -> list[AdaptiveResampling]:
    """Every ARS module of ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, AdaptiveResampling)]


@contextmanager
def grid_control(model: nn.Module, control: str, shift: float = 0.5) -> Iterator[None]:
    """Within the block, every ARS of ``model`` resamples its input at ``control``'s grid.

    ``"own"`` changes nothing (and needs no ARS); the others need at least one ARS module.
    The hooks are removed on exit, even on error.
    """
    control = check_control(control)
    if control == "shift":
        check_shift(shift)
    modules = resampling_modules(model)
    if control != "own" and not modules:
        raise ValueError(
            f"control {control!r} needs a model with ARS (AdaptiveResampling) modules; "
            "this one has none"
        )

    def hook_for(module: AdaptiveResampling) -> Callable[..., Resampled]:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Resampled) -> Resampled:
            grid = control_grid(output.grid, control, shift)
            features = ops.resample(args[0], grid, backend=module.backend)
            return Resampled(features, grid, output.logits)

        return hook

    handles = [] if control == "own" else [m.register_forward_hook(hook_for(m)) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
