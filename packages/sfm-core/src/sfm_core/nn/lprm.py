"""Cascaded local pixel relations, LPRM (METHOD.md §3.2): multi-scale dynamic refinement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from sfm_core import ops
from sfm_core._checks import check_same_batch, check_same_device, check_tensor
from sfm_core.nn._inputs import check_backend, check_channels, check_dilations, check_features
from sfm_core.nn.norms import NormLayer, build_norm

TAPS = 9  # one relation logit per tap of the dilated 3×3 neighbourhood


class LocalPixelRelation(nn.Module):
    """Refine values by a cascade of dilated 3×3 aggregations whose weights come from a guide.

    ``R₀ = ReLU(norm(conv3×3(guide → 9)))`` (zero padding, no bias). For each dilation ``d``:
    ``R_t = norm(conv3×3 dilation d, replicate padding, 9→9, no bias)(R_{t−1})`` and
    ``V_t = lprm_aggregate(V_{t−1}, R_t, d)``. Gated (default): ``V ← V + α_t (V_t − V)`` with scalar
    ``α_t`` starting at 0, so a fresh module is the identity; ``gated=False`` is the authors' form
    ``V ← V_t``. The relation map, not the values, is what the cascade carries between steps.
    """

    def __init__(
        self,
        guide_channels: int,
        dilations: Sequence[int] = (1, 2, 4, 8, 16),
        *,
        gated: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.guide_channels = check_channels("guide_channels", guide_channels)
        self.dilations = check_dilations(dilations)
        self.backend = check_backend(backend)
        self.seed = nn.Sequential(
            nn.Conv2d(guide_channels, TAPS, 3, padding=1, bias=False),
            build_norm(norm_layer, TAPS),
            nn.ReLU(inplace=True),
        )
        self.relations = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    TAPS, TAPS, 3, padding=d, dilation=d, padding_mode="replicate", bias=False
                ),
                build_norm(norm_layer, TAPS),
            )
            for d in self.dilations
        )
        self.gates = nn.Parameter(torch.zeros(len(self.dilations))) if gated else None

    def forward(self, values: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``values`` ``[B, K, H, W]`` (any floating dtype) refined under ``guide``.

        ``guide`` is ``[B, guide_channels, H, W]`` with the module's device and dtype.
        """
        check_features(
            "guide",
            guide,
            channels=self.guide_channels,
            module=self,
            shape_hint="[B, guide_channels, H, W]",
        )
        check_tensor("values", values, ndim=4, shape_hint="[B, K, H, W]")
        check_same_device(values=values, guide=guide)
        check_same_batch(values=values, guide=guide)
        if values.shape[-2:] != guide.shape[-2:]:
            raise ValueError(
                f"values and guide must share H, W, got values {tuple(values.shape)} "
                f"and guide {tuple(guide.shape)}"
            )
        single_value = guide.shape[0] * guide.shape[2] * guide.shape[3] == 1
        batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())
        if self.training and single_value and batch_norm:
            raise ValueError(
                "guide is one 1x1 image: training-mode BatchNorm of the relations needs more "
                "than one value per channel; pass norm_layer=sfm_core.nn.group_norm()"
            )
        relation = self.seed(guide)
        out = values
        for step, (dilation, relate) in enumerate(zip(self.dilations, self.relations, strict=True)):
            relation = _relate(cast(nn.Sequential, relate), relation, dilation)
            gate = None if self.gates is None else self.gates[step]
            out = ops.lprm_aggregate(out, relation, dilation, gate=gate, backend=self.backend)
        return out

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, gated={self.gates is not None}"


def _relate(relate: nn.Sequential, relation: torch.Tensor, dilation: int) -> torch.Tensor:
    """``relate(relation)`` (dilated 3x3 conv, replicate padding, then norm) with clamped taps.

    A tap beyond the map's edge reads the edge pixel, so a dilation past ``H - 1`` rows (``W - 1``
    columns) reads what ``H - 1`` (``W - 1``) reads: the same values, with padding (hence memory)
    bounded by the map for any dilation.
    """
    conv, norm = cast(nn.Conv2d, relate[0]), relate[1]
    height, width = relation.shape[-2:]
    step_y, step_x = max(1, min(dilation, height - 1)), max(1, min(dilation, width - 1))
    if (step_y, step_x) == (dilation, dilation):
        return relate(relation)  # type: ignore[no-any-return]
    padded = F.pad(relation, (step_x, step_x, step_y, step_y), mode="replicate")
    return norm(F.conv2d(padded, conv.weight, dilation=(step_y, step_x)))  # type: ignore[no-any-return]
