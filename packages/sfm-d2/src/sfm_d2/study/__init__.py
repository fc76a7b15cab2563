"""The study behind ``nox -s study``: SFM, its ablations and a BlurPool-style low-pass, each
continued from shared baseline checkpoints with paired seeds, compared with a hierarchical
bootstrap (:mod:`sfm_d2.study.bootstrap`)."""

from sfm_d2.study.bootstrap import Interval, hierarchical_bootstrap, paired_difference
from sfm_d2.study.plan import ARMS, BASELINE, Arm, Plan, quick_plan
from sfm_d2.study.run import run_study

__all__ = [
    "ARMS",
    "BASELINE",
    "Arm",
    "Interval",
    "Plan",
    "hierarchical_bootstrap",
    "paired_difference",
    "quick_plan",
    "run_study",
]
