"""Data for SFM-Mask2Former: the semantic training mapper, dataset registration with validation
that names bad files (``registration``: by folders; ``config_datasets``: what a config names or
describes, in every process), and the ADE20K label preparation."""

from sfm_d2.data.ade20k import prepare_ade20k, shift_ade20k_label
from sfm_d2.data.color_aug import ColorJitterSSDTransform, RandomColorJitterSSD, SSDJitter
from sfm_d2.data.config_datasets import register_datasets
from sfm_d2.data.crop import RandomCropCategoryAreaLimit, dominant_fraction
from sfm_d2.data.mappers import TRAIN_MAPPERS, build_mapper
from sfm_d2.data.registration import (
    datasets_root,
    pair_images_and_labels,
    register_ade20k,
    register_cityscapes,
    register_semantic_dataset,
)
from sfm_d2.data.semantic_mapper import MaskFormerSemanticDatasetMapper, semantic_instances
from sfm_d2.data.validation import (
    FULL_CHECK_MAX_RECORDS,
    BadDataError,
    check_label_values,
    validate_semantic_records,
)

__all__ = [
    "FULL_CHECK_MAX_RECORDS",
    "TRAIN_MAPPERS",
    "BadDataError",
    "ColorJitterSSDTransform",
    "MaskFormerSemanticDatasetMapper",
    "RandomColorJitterSSD",
    "RandomCropCategoryAreaLimit",
    "SSDJitter",
    "build_mapper",
    "check_label_values",
    "datasets_root",
    "dominant_fraction",
    "pair_images_and_labels",
    "prepare_ade20k",
    "register_ade20k",
    "register_cityscapes",
    "register_datasets",
    "register_semantic_dataset",
    "semantic_instances",
    "shift_ade20k_label",
    "validate_semantic_records",
]
