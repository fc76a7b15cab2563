"""Mask2Former's registered names and sfm_d2's: a hint where detectron2 gives a bare KeyError.

detectron2's registries refuse duplicate names, so sfm_d2 registers its Mask2Former parts under
names of its own (``SFMMaskFormer``, ...). A config written for the official Mask2Former names
the official parts; without Mask2Former installed, detectron2 stops with ``KeyError: "No object
named 'MaskFormer' found in 'META_ARCH' registry!"``. :func:`check_registered_names` says instead
which value to write. A name that is registered (the official Mask2Former is imported) is left
alone: it is the user's choice.
"""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

from sfm_d2.modeling.mask2former import SFM_TRANSFORMER_DECODER_REGISTRY

# config key -> (official Mask2Former name, sfm_d2's name, the registry sfm_d2 looks it up in)
OFFICIAL_NAMES: dict[str, tuple[str, str, Any]] = {
    "MODEL.META_ARCHITECTURE": ("MaskFormer", "SFMMaskFormer", META_ARCH_REGISTRY),
    "MODEL.SEM_SEG_HEAD.NAME": ("MaskFormerHead", "SFMMaskFormerHead", SEM_SEG_HEADS_REGISTRY),
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": (
        "MSDeformAttnPixelDecoder",
        "SFMMSDeformAttnPixelDecoder",
        SEM_SEG_HEADS_REGISTRY,
    ),
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": (
        "MultiScaleMaskedTransformerDecoder",
        "SFMMultiScaleMaskedTransformerDecoder",
        SFM_TRANSFORMER_DECODER_REGISTRY,
    ),
    "MODEL.BACKBONE.NAME": ("D2SwinTransformer", "build_sfm_swin_backbone", BACKBONE_REGISTRY),
}
# The decoder names are read only by a Mask2Former head (their defaults are the official names).
_HEAD_KEYS = ("MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME")
_MASK2FORMER_HEADS = ("MaskFormerHead", "SFMMaskFormerHead")


def _value(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, CfgNode) else None
    return node


def check_registered_names(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming each key set to an official Mask2Former name that is not
    registered, with the name sfm_d2 registers instead."""
    mask2former_head = _value(cfg, "MODEL.SEM_SEG_HEAD.NAME") in _MASK2FORMER_HEADS
    wrong = []
    for key, (official, ours, registry) in OFFICIAL_NAMES.items():
        if key in _HEAD_KEYS and not mask2former_head:
            continue
        if _value(cfg, key) == official and official not in registry:
            wrong.append((key, official, ours))
    if wrong:
        lines = [f"  {key} {ours}   (not {official!r})" for key, official, ours in wrong]
        raise ValueError(
            "the config names Mask2Former's official parts, which are not registered here; "
            "sfm_d2 registers them under its own names (detectron2's registries refuse "
            "duplicates). Set:\n" + "\n".join(lines)
        )
