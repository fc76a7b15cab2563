"""Names of the extra entries an SFM backbone's output dict carries beside its feature maps.

Every returned level ``"resN"`` comes with its composite positions (SPEC section 2) under
:func:`positions_key`, and every ARS that ran puts its attention logits (for the edge-guidance
loss) under :func:`ars_logits_key` of the stage it precedes. ``output_shape()`` lists only the
feature levels, as detectron2's Backbone contract expects; heads pick features by name, so the
extra entries pass through them untouched.
"""

from __future__ import annotations

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
