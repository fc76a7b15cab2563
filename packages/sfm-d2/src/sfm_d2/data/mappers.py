"""Pick the dataset mapper the config names, as Mask2Former's train_net does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper

from sfm_d2.data.semantic_mapper import MaskFormerSemanticDatasetMapper

# INPUT.DATASET_MAPPER_NAME -> training mapper class (built with (cfg, True)).
TRAIN_MAPPERS: dict[str, Callable[..., Any]] = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
}


def build_mapper(cfg: CfgNode, is_train: bool) -> Callable[[dict[str, Any]], Any]:
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME``, or detectron2's
    ``DatasetMapper(cfg, False)`` at test time (whole-image inference after the test resize)."""
    if not is_train:
        return DatasetMapper(cfg, False)
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME must be one of {', '.join(sorted(TRAIN_MAPPERS))}, "
            f"got {name!r}"
        )
    return TRAIN_MAPPERS[name](cfg, True)
