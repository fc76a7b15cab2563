"""Mask2Former for SFM: the detectron2-free parts (decoder, matcher, criterion, point sampling,
deformable attention, pixel decoder) and the detectron2 glue that registers them (head, registry,
meta_arch: imported here, so importing this package registers the SFM names)."""

from sfm_d2.modeling.mask2former.criterion import SetCriterion
from sfm_d2.modeling.mask2former.head import SFMMaskFormerHead, SFMMSDeformAttnPixelDecoder
from sfm_d2.modeling.mask2former.matcher import HungarianMatcher
from sfm_d2.modeling.mask2former.meta_arch import SFMMaskFormer
from sfm_d2.modeling.mask2former.ms_deform_attn import MSDeformAttn
from sfm_d2.modeling.mask2former.pixel_decoder import MSDeformAttnPixelDecoder
from sfm_d2.modeling.mask2former.point_sampling import point_sample, uncertain_point_coords
from sfm_d2.modeling.mask2former.position_encoding import (
    PositionEmbeddingSine,
    sine_position_encoding,
)
from sfm_d2.modeling.mask2former.registry import (
    SFM_TRANSFORMER_DECODER_REGISTRY,
    SFMMultiScaleMaskedTransformerDecoder,
)
from sfm_d2.modeling.mask2former.transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = [
    "SFM_TRANSFORMER_DECODER_REGISTRY",
    "HungarianMatcher",
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "MultiScaleMaskedTransformerDecoder",
    "PositionEmbeddingSine",
    "SFMMSDeformAttnPixelDecoder",
    "SFMMaskFormer",
    "SFMMaskFormerHead",
    "SFMMultiScaleMaskedTransformerDecoder",
    "SetCriterion",
    "point_sample",
    "sine_position_encoding",
    "uncertain_point_coords",
]
