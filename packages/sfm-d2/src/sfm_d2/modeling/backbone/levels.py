"""The four levels ``res2..res5`` of the Swin and ConvNeXt backbones: names, argument checks,
and the composite-position bookkeeping around the ARS modules.

ARS sits on a stage's output (after it was tapped as a feature) and before the next downsampling;
positions follow METHOD.md §2 (identity before the first ARS, composed at an ARS, resized across
a stride-2 layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from sfm_core.functional import compose_positions, identity_positions, resize_positions

ArsFactory = Callable[[str, int], nn.Module]  # (stage it precedes, input channels) -> ARS
LEVELS = ("res2", "res3", "res4", "res5")


def check_out_features(key: str, out_features: Sequence[str]) -> list[str]:
    """Return ``out_features`` as a list if it is a non-empty subset of ``res2..res5``."""
    if (
        isinstance(out_features, str)
        or not out_features
        or any(f not in LEVELS for f in out_features)
        or len(set(out_features)) != len(out_features)
    ):
        raise ValueError(
            f"{key} must be a non-empty list of distinct names from {list(LEVELS)}, "
            f"got {out_features!r}"
        )
    return list(out_features)


def check_stage_lists(key: str, value: Sequence[int]) -> list[int]:
    """Return ``value`` as a list if it holds one positive int per stage (four)."""
    if (
        isinstance(value, str)
        or len(value) != len(LEVELS)
        or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value)
    ):
        raise ValueError(f"{key} must be a list of 4 positive ints, got {value!r}")
    return list(value)


def first_positions(x: torch.Tensor) -> torch.Tensor:
    """Identity positions for the map ``x`` ``[B, C, h, w]``: fp32, fp64 for fp64 maps."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    # int(): under tracing (fvcore's FLOP count) sizes come as tensors; the trace fixes them.
    batch, _, height, width = (int(size) for size in x.shape)
    return identity_positions(batch, height, width, device=x.device, dtype=dtype)


def resample_level(
    ars: nn.Module, x: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ARS on ``x`` ``[B, C, H, W]``: (resampled map, composed positions, attention logits)."""
    features, grid, logits = ars(x)
    return features, compose_positions(positions, grid), logits


def downsampled_positions(positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Positions for the map ``x`` ``[B, C, h, w]`` after a downsampling layer (bilinear resize)."""
    return resize_positions(positions, (int(x.shape[-2]), int(x.shape[-1])))
