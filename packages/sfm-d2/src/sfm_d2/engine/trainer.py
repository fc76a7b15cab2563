"""``SFMTrainer``: detectron2's ``DefaultTrainer`` with the data, evaluation and solver of SFM.

Everything else (hooks, checkpoints with the scheduler state, DDP, AMP, writers) is detectron2's.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
)
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import DatasetEvaluator
from torch import nn

from sfm_d2.data import build_mapper
from sfm_d2.engine.resumable import ResumableTrainerMixin
from sfm_d2.engine.solver import build_lr_scheduler, build_optimizer
from sfm_d2.evaluation import SFMSemSegEvaluator
from sfm_d2.official_names import check_registered_names

# Datasets whose labels are per-pixel class ids: detectron2's "cityscapes_sem_seg" builtins hold
# train ids too, so the same evaluator measures them (cityscapesscripts is only needed for its
# own evaluation script, which computes the same mIoU over the 19 train ids).
SEMANTIC_EVALUATOR_TYPES = ("sem_seg", "cityscapes_sem_seg")

logger = logging.getLogger(__name__)


class SFMTrainer(ResumableTrainerMixin, DefaultTrainer):  # type: ignore[misc]
    """Trains and evaluates SFM models (``SFMMaskFormer`` and any detectron2 semantic model).

    * train data: the mapper named by ``INPUT.DATASET_MAPPER_NAME`` (:func:`sfm_d2.data.build_mapper`);
    * test data: detectron2's ``DatasetMapper`` (whole images after the test resize);
    * evaluation: :class:`~sfm_d2.evaluation.SFMSemSegEvaluator` for semantic datasets; each
      evaluation writes detectron2's ``sem_seg_evaluation.pth`` and ``sem_seg_predictions.json``
      and SFM's ``sem_seg_evaluation.json`` to ``OUTPUT_DIR/inference/<dataset>/``;
    * optimizer / LR schedule: :mod:`sfm_d2.engine.solver`;
    * checkpoints and resume: :mod:`sfm_d2.engine.resumable` (exact resume, atomic files).
    """

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        check_registered_names(cfg)  # a hint instead of detectron2's bare registry KeyError
        model: nn.Module = super().build_model(cfg)
        return model

    @classmethod
    def build_train_loader(cls, cfg: CfgNode, start_iter: int = 0) -> Any:
        return cls.resumable_loader(cfg, build_mapper(cfg, is_train=True), start_iter)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_mapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
        if evaluator_type not in SEMANTIC_EVALUATOR_TYPES:
            raise ValueError(
                f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; SFMTrainer "
                f"evaluates the types {list(SEMANTIC_EVALUATOR_TYPES)}"
            )
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return SFMSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        optimizer = build_optimizer(cfg, model)
        for group in optimizer.param_groups:
            logger.info(
                "param group: lr %.3g, weight decay %.3g, %d tensors (e.g. %s)",
                group["lr"],
                group["weight_decay"],
                len(group["params"]),
                group["param_names"][0],
            )
        return optimizer

    @classmethod
    def build_lr_scheduler(
        cls, cfg: CfgNode, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler:
        return build_lr_scheduler(cfg, optimizer)
