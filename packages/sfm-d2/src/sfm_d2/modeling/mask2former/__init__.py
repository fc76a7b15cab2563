"""Mask2Former for SFM: the detectron2-free parts (decoder, matcher, criterion, point sampling)."""

from sfm_d2.modeling.mask2former.criterion import SetCriterion
from sfm_d2.modeling.mask2former.matcher import HungarianMatcher
from sfm_d2.modeling.mask2former.point_sampling import point_sample, uncertain_point_coords
from sfm_d2.modeling.mask2former.position_encoding import (
    PositionEmbeddingSine,
    sine_position_encoding,
)
from sfm_d2.modeling.mask2former.transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = [
    "HungarianMatcher",
    "MultiScaleMaskedTransformerDecoder",
    "PositionEmbeddingSine",
    "SetCriterion",
    "point_sample",
    "sine_position_encoding",
    "uncertain_point_coords",
]
