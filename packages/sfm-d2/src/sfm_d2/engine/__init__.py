"""Training with detectron2: SFMTrainer, its optimizer and LR schedule, and the train_net CLI."""

from sfm_d2.data import register_datasets
from sfm_d2.engine.cli import default_argument_parser, main, run, setup
from sfm_d2.engine.solver import WarmupPolyLR, build_lr_scheduler, build_optimizer
from sfm_d2.engine.trainer import SFMTrainer

__all__ = [
    "SFMTrainer",
    "WarmupPolyLR",
    "build_lr_scheduler",
    "build_optimizer",
    "default_argument_parser",
    "main",
    "register_datasets",
    "run",
    "setup",
]
