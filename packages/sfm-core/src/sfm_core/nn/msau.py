"""MSAU, Multi-Scale Adaptive Upsampling (METHOD.md §3): demodulation plus LPRM refinement."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sfm_core import ops
from sfm_core._checks import check_same_batch, check_same_device, check_size
from sfm_core.functional.lattice_cells import DEFAULT_METHOD, check_method
from sfm_core.functional.positions import check_positions
from sfm_core.nn._inputs import check_channels, check_features
from sfm_core.nn.lprm import LocalPixelRelation
from sfm_core.nn.norms import NormLayer


class MultiScaleAdaptiveUpsampling(nn.Module):
    """Put each warped-lattice value back at its image position, then refine with LPRM.

    ``forward(z, positions, size, guide=None)``: non-uniform upsampling of ``z`` ``[B, channels,
    h, w]`` (lattice positions ``[B, 2, h, w]``) to ``size``, then the :class:`LocalPixelRelation`
    cascade guided by ``guide`` ``[B, guide_channels, *size]``, or by the upsampled values
    themselves when ``guide`` is ``None`` (which needs ``guide_channels == channels``). Starts as
    plain non-uniform upsampling (the LPRM gates start at 0); ``gated=False`` gives the authors'
    ungated cascade, which does not. ``method`` chooses the non-uniform upsampling:
    ``"quads"`` (default; exactly bilinear resizing on a uniform lattice, so a fresh MSAU on
    unwarped features is plain bilinear upsampling) or METHOD.md §3.1's ``"triangles"``.
    """

    def __init__(
        self,
        channels: int,
        guide_channels: int,
        dilations: Sequence[int] = (1, 2, 4, 8, 16),
        *,
        gated: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
        method: str = DEFAULT_METHOD,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_channels("channels", channels)
        self.method = check_method(method)
        self.relation = LocalPixelRelation(
            guide_channels, dilations, gated=gated, norm_layer=norm_layer, backend=backend
        )
        self.backend = self.relation.backend

    def forward(
        self,
        z: torch.Tensor,
        positions: torch.Tensor,
        size: tuple[int, int],
        guide: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_features(
            "z", z, channels=self.channels, module=self, shape_hint="[B, channels, h, w]"
        )
        check_positions(positions)
        check_same_device(z=z, positions=positions)
        check_same_batch(z=z, positions=positions)
        if positions.shape[-2:] != z.shape[-2:]:
            raise ValueError(
                f"positions and z must share h, w, got positions {tuple(positions.shape)} "
                f"and z {tuple(z.shape)}"
            )
        height, width = check_size("size", size)
        if guide is None:
            if self.relation.guide_channels != self.channels:
                raise ValueError(
                    "guide is None, so the upsampled values guide the relations: that needs "
                    f"guide_channels ({self.relation.guide_channels}) == channels "
                    f"({self.channels}); pass guide [B, guide_channels, *size]"
                )
        else:
            hint = f"[B, guide_channels, {height}, {width}] (size)"
            check_features(
                "guide", guide, channels=self.relation.guide_channels, module=self, shape_hint=hint
            )
            check_same_batch(z=z, guide=guide)
            if guide.shape[-2:] != (height, width):
                raise ValueError(f"guide must be {hint}, got shape {tuple(guide.shape)}")
        upsampled = ops.nonuniform_upsample(
            z, positions, (height, width), method=self.method, backend=self.backend
        )
        return self.relation(upsampled, upsampled if guide is None else guide)  # type: ignore[no-any-return]
