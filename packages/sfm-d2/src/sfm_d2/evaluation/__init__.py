"""Semantic segmentation metrics: a torch-only core and a detectron2 evaluator built on it.

The core (``confusion``, ``boundary``, ``summary``) needs no detectron2; the evaluator module
does, and is imported here because ``import sfm_d2`` already requires detectron2.
"""

from sfm_d2.evaluation.boundary import boundary_band, boundary_iou, boundary_statistics
from sfm_d2.evaluation.confusion import RegionScores, confusion_matrix, region_scores
from sfm_d2.evaluation.sem_seg_evaluator import SFMSemSegEvaluator
from sfm_d2.evaluation.summary import sem_seg_results

__all__ = [
    "RegionScores",
    "SFMSemSegEvaluator",
    "boundary_band",
    "boundary_iou",
    "boundary_statistics",
    "confusion_matrix",
    "region_scores",
    "sem_seg_results",
]
