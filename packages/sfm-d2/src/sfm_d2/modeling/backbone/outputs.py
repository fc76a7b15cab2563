"""Names of the extra entries an SFM backbone's output dict carries beside its feature maps.

Every returned level ``"resN"`` comes with its composite positions (METHOD.md §2) under
:func:`positions_key`, and every ARS that ran puts its attention logits (for the edge-guidance
loss) under :func:`ars_logits_key` of the stage it precedes. ``output_shape()`` lists only the
feature levels, as detectron2's Backbone contract expects; heads pick features by name, so the
extra entries pass through them untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

POSITIONS_SUFFIX = "_positions"
ARS_LOGITS_SUFFIX = "_ars_logits"


def positions_key(level: str) -> str:
    """Key of level ``level``'s composite positions ``[B, 2, h, w]`` (normalized, detached)."""
    return f"{level}{POSITIONS_SUFFIX}"


def ars_logits_key(stage: str) -> str:
    """Key of the attention logits ``[B, 1, H, W]`` of the ARS placed before stage ``stage``."""
    return f"{stage}{ARS_LOGITS_SUFFIX}"


def is_feature_key(key: str) -> bool:
    """True for a feature map's key, False for the positions / ARS-logit entries."""
    return not key.endswith((POSITIONS_SUFFIX, ARS_LOGITS_SUFFIX))


def ars_stages(features: Mapping[str, torch.Tensor]) -> list[str]:
    """The stages whose ARS ran, from a backbone's output dict (sorted: res3, res4, res5)."""
    return sorted(k[: -len(ARS_LOGITS_SUFFIX)] for k in features if k.endswith(ARS_LOGITS_SUFFIX))


def ars_input_positions(features: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
    """Image positions ``[B, 2, H, W]`` of the map the ARS before ``stage`` resamples.

    In all three backbones that map is the output of the level before ``stage`` (ResNet: ARS on
    the input of the stage; Swin, ConvNeXt: on the previous stage's output after its tap), so
    its positions are that level's. The backbone must return that level.
    """
    previous = f"res{int(stage[3:]) - 1}"
    key = positions_key(previous)
    if key not in features:
        raise ValueError(
            f"the backbone output has no {key!r}, the image positions of the ARS input of "
            f"{stage}: add {previous!r} to the backbone's OUT_FEATURES"
        )
    return features[key]
