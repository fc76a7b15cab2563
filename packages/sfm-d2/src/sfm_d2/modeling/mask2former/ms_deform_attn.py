"""``MSDeformAttn``: multi-scale deformable attention (Deformable DETR) over ``sfm_core.ops``.

The module owns the four projections and their initialisation (offsets start on a ring of unit
directions, one per head, growing with the point index; attention weights start uniform); the
sampling itself is ``sfm_core.ops.ms_deform_attn``, pure PyTorch by default and a Triton kernel
when that backend is chosen, so nothing has to be compiled (Mask2Former's most common install
failure). Parameter names are the official ones, so converted Mask2Former weights load.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sfm_core import ops


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` learned offsets around its reference point per level.

    Args:
        d_model: channels of queries and values.
        n_levels: feature levels in the flattened value.
        n_heads: attention heads (``d_model`` must divide by it).
        n_points: sampling points per head and level.
        backend: ``sfm_core.ops`` backend (None: ``SFM_BACKEND`` / automatic choice).
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("n_levels", n_levels),
            ("n_heads", n_heads),
            ("n_points", n_points),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = (
            d_model,
            n_levels,
            n_heads,
            n_points,
        )
        self.backend = backend
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (re-applied after an enclosing xavier init)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        # Scale each direction onto the unit square (max-abs 1), then step k+1 for point k.
        directions = directions / directions.abs().amax(-1, keepdim=True)
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * steps
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` ``[B, Q, d_model]`` into the flattened levels ``value``.

        ``reference_points`` ``[B, Q, n_levels, 2]``: normalised (x, y) per level;
        ``value`` ``[B, S, d_model]`` with ``S = Σ H_l·W_l`` in the order of ``spatial_shapes``
        ``[n_levels, 2]`` (H, W); ``padding_mask`` ``[B, S]`` (True = padding) zeroes values.
        Returns ``[B, Q, d_model]``.
        """
        batch, num_queries, _ = self._check(query, reference_points, value, spatial_shapes)
        projected = self.value_proj(value)
        if padding_mask is not None:
            projected = projected.masked_fill(padding_mask[..., None], 0.0)
        head_dim = self.d_model // self.n_heads
        projected = projected.view(batch, value.shape[1], self.n_heads, head_dim)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = weights.softmax(-1).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points
        )
        # Offsets are in pixels of each level: divide by its (W, H) to normalise.
        normaliser = spatial_shapes.flip(-1).to(offsets.dtype)
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normaliser[None, None, None, :, None, :]
        )
        sampled = ops.ms_deform_attn(
            projected, spatial_shapes, locations, weights, backend=self.backend
        )
        return self.output_proj(sampled)  # type: ignore[no-any-return]

    def _check(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
    ) -> tuple[int, int, int]:
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"query must be [B, Q, {self.d_model}], got shape {tuple(query.shape)}"
            )
        batch, num_queries, _ = query.shape
        expected = (batch, num_queries, self.n_levels, 2)
        if tuple(reference_points.shape) != expected:
            raise ValueError(
                f"reference_points must be [B, Q, n_levels, 2] = {expected}, "
                f"got shape {tuple(reference_points.shape)}"
            )
        if tuple(spatial_shapes.shape) != (self.n_levels, 2):
            raise ValueError(
                f"spatial_shapes must be [n_levels, 2] = ({self.n_levels}, 2), "
                f"got shape {tuple(spatial_shapes.shape)}"
            )
        if value.dim() != 3 or value.shape[0] != batch or value.shape[-1] != self.d_model:
            raise ValueError(
                f"value must be [{batch}, S, {self.d_model}], got shape {tuple(value.shape)}"
            )
        return batch, num_queries, self.d_model

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
            f"n_points={self.n_points}"
        )
