"""SFM backbones, registered in detectron2's ``BACKBONE_REGISTRY`` on import."""

from sfm_d2.modeling.backbone.outputs import ars_logits_key, is_feature_key, positions_key
from sfm_d2.modeling.backbone.resnet import SFMResNet, build_sfm_resnet_backbone

__all__ = [
    "SFMResNet",
    "ars_logits_key",
    "build_sfm_resnet_backbone",
    "is_feature_key",
    "positions_key",
]
