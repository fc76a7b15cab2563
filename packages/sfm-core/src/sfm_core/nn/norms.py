"""Normalisation choices for the generators' pyramid branches, and their checks.

The 1×1 pyramid bin holds one value per image and channel, so training-mode BatchNorm needs two
or more images per batch there, and GroupNorm needs two or more channels per group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sfm_core._checks import check_positive

NormLayer = Callable[[int], nn.Module]


def group_norm(groups: int = 32) -> NormLayer:
    """A ``norm_layer`` factory for batch-1 training: ``GroupNorm`` that fits any channel count.

    For ``c`` channels it uses the largest divisor of ``c`` that is at most ``groups`` and
    leaves at least two channels per group (so the 1×1 bin normalises more than one value);
    one group of one channel only when ``c == 1``, which no normalisation can train on alone.
    """
    check_positive("groups", groups, integer=True)

    def build(channels: int) -> nn.Module:
        limit = min(groups, max(1, channels // 2))
        chosen = max(g for g in range(1, limit + 1) if channels % g == 0)
        return nn.GroupNorm(chosen, channels)

    return build


def build_norm(norm_layer: object, channels: int) -> nn.Module:
    """``norm_layer(channels)``, after checking that it is callable and returns a module."""
    if not callable(norm_layer):
        raise TypeError(
            f"norm_layer must be a callable taking a channel count, got {type(norm_layer).__name__}"
        )
    try:
        module = norm_layer(channels)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"norm_layer({channels}) failed ({error}); sfm_core.nn.group_norm() builds a GroupNorm "
            "for any channel count"
        ) from error
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"norm_layer({channels}) must return an nn.Module, got {type(module).__name__}"
        )
    return module


def check_single_value_norm(norm: nn.Module, x: torch.Tensor, training: bool) -> None:
    """Raise, naming the remedy, where ``norm`` would normalise one value per group in training.

    ``norm`` follows the 1×1 pyramid bin of ``x`` ``[B, C, H, W]``; torch's own error there names
    no argument.
    """
    if not training:
        return
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and x.shape[0] == 1:
        raise ValueError(
            "x has batch 1, but in training the BatchNorm of the generator's 1x1 pyramid bin needs "
            "2 or more images; pass norm_layer=sfm_core.nn.group_norm() (or train with batch >= 2)"
        )
    if isinstance(norm, nn.GroupNorm) and norm.num_channels == norm.num_groups:
        raise ValueError(
            f"norm_layer gave GroupNorm({norm.num_groups}, {norm.num_channels}): one channel per "
            "group, so in training the 1x1 pyramid bin normalises a single value; use "
            "sfm_core.nn.group_norm(), which keeps 2+ channels per group"
        )
