"""Sine positional encodings of feature maps, uniform or at true image positions (METHOD.md §4).

Mask2Former encodes each memory pixel by its place on the map's own uniform lattice. After an ARS
the pixels of a warped level no longer sit on that lattice, so the grid-aware variant encodes the
composite positions (where each pixel really is in the image) with the same sine formula.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sfm_core._checks import check_positive, compute_dtype
from sfm_core.functional.positions import check_positions, identity_positions

# Mask2Former's normalisation divides by (last cumulative index + eps): kept so that the uniform
# path reproduces the official numbers, not just the same lattice (mask2former_coordinates).
_OFFICIAL_EPS = 1e-6


def sine_position_encoding(
    positions: torch.Tensor,
    num_feats: int = 128,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> torch.Tensor:
    """DETR's sine encoding of normalised ``(x, y)`` positions ``[B, 2, h, w]`` -> ``[B, 2F, h, w]``.

    The ``F = num_feats`` y features come first, then the x features; inside each, feature ``2i``
    is ``sin(p / T^(2i/F))`` and ``2i+1`` is ``cos(p / T^(2i/F))`` with ``p = coordinate * scale``.
    Computed in at least float32.
    """
    check_positions(positions)
    check_positive("num_feats", num_feats, integer=True)
    if num_feats % 2:
        raise ValueError(f"num_feats must be even (sin/cos pairs), got {num_feats}")
    check_positive("temperature", temperature)
    check_positive("scale", scale)
    dtype = compute_dtype(positions.dtype)
    index = torch.arange(num_feats, device=positions.device, dtype=dtype)
    dim_t = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)
    angles = positions.to(dtype).unsqueeze(-1) * scale / dim_t  # [B, 2, h, w, F]
    encoded = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
    x_feats, y_feats = encoded.unbind(1)
    return torch.cat((y_feats, x_feats), dim=-1).permute(0, 3, 1, 2).contiguous()


def mask2former_coordinates(positions: torch.Tensor) -> torch.Tensor:
    """Image positions ``[B, 2, h, w]`` of an ``h x w`` map → the coordinates Mask2Former encodes.

    Mask2Former normalises the cumulative sum of an all-valid mask: pixel ``j`` of an ``n``-wide
    map gets ``(j + 1) / (n + 1e-6)``, its *far* edge, not its centre. A pixel at normalised image
    position ``p`` sits at continuous index ``p·n − 0.5`` of the map, so it gets
    ``(p·n + 0.5) / (n + 1e-6)``: the pixel centres ``(j + 0.5) / n`` give the official lattice,
    and a warped level's true positions are encoded on the same scale.
    """
    check_positions(positions)
    height, width = positions.shape[-2:]
    sizes = positions.new_tensor([width, height]).view(1, 2, 1, 1)
    return (positions * sizes + 0.5) / (sizes + _OFFICIAL_EPS)


class PositionEmbeddingSine(nn.Module):
    """Normalised sine encoding of a feature map: its uniform lattice, or given image positions."""

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        check_positive("num_feats", num_feats, integer=True)
        if num_feats % 2:
            raise ValueError(f"num_feats must be even (sin/cos pairs), got {num_feats}")
        check_positive("temperature", temperature)
        self.num_feats = num_feats
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Encoding ``[B, 2*num_feats, h, w]`` of map ``x [B, C, h, w]`` (float32 or wider).

        ``positions`` None: the official Mask2Former lattice (the pixel centres, so that the
        grid-aware encoding of a uniform level is the plain one bit for bit). Otherwise the true
        normalised image positions ``[B, 2, h, w]`` of ``x``'s pixels (grid-aware encoding).
        Both go through :func:`mask2former_coordinates`.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a 4-D tensor [B, C, h, w], got {shape}")
        # int(): under tracing (fvcore's FLOP count) sizes come as tensors; the trace fixes them.
        batch, _, height, width = (int(size) for size in x.shape)
        if positions is None:
            dtype = compute_dtype(x.dtype) if x.dtype.is_floating_point else torch.float32
            positions = identity_positions(batch, height, width, device=x.device, dtype=dtype)
        else:
            check_positions(positions)
            if positions.shape[0] != batch or positions.shape[-2:] != (height, width):
                raise ValueError(
                    f"positions must be [B, 2, h, w] = [{batch}, 2, {height}, {width}] to match "
                    f"x, got shape {tuple(positions.shape)}"
                )
        coordinates = mask2former_coordinates(positions.to(compute_dtype(positions.dtype)))
        return sine_position_encoding(coordinates, self.num_feats, self.temperature)

    def extra_repr(self) -> str:
        return f"num_feats={self.num_feats}, temperature={self.temperature}"
