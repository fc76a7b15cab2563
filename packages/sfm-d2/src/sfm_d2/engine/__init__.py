"""Training: the optimizer and LR schedule of Mask2Former-style training with SFM multipliers."""

from sfm_d2.engine.solver import WarmupPolyLR, build_lr_scheduler, build_optimizer

__all__ = ["WarmupPolyLR", "build_lr_scheduler", "build_optimizer"]
