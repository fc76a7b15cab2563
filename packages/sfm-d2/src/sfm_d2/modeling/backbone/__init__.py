"""SFM backbones, registered in detectron2's ``BACKBONE_REGISTRY`` on import."""

from sfm_d2.modeling.backbone.convnext import SFMConvNeXt, build_sfm_convnext_backbone
from sfm_d2.modeling.backbone.outputs import ars_logits_key, is_feature_key, positions_key
from sfm_d2.modeling.backbone.resnet import SFMResNet, build_sfm_resnet_backbone
from sfm_d2.modeling.backbone.swin import SFMSwinTransformer, build_sfm_swin_backbone

__all__ = [
    "SFMConvNeXt",
    "SFMResNet",
    "SFMSwinTransformer",
    "ars_logits_key",
    "build_sfm_convnext_backbone",
    "build_sfm_resnet_backbone",
    "build_sfm_swin_backbone",
    "is_feature_key",
    "positions_key",
]
