"""Reference SFM ops in plain, differentiable PyTorch: the ground truth every backend matches.

Nothing here dispatches to another backend; :mod:`sfm_core.ops` does that.
"""

from sfm_core.functional.box_high_pass import box_average, box_high_pass
from sfm_core.functional.lprm import lprm_aggregate
from sfm_core.functional.ms_deform_attn import ms_deform_attn
from sfm_core.functional.nonuniform import gather, nonuniform_upsample, rasterize
from sfm_core.functional.positions import compose_positions, identity_positions, resize_positions
from sfm_core.functional.resample import resample
from sfm_core.functional.saliency import saliency_grid

__all__ = [
    "box_average",
    "box_high_pass",
    "compose_positions",
    "gather",
    "identity_positions",
    "lprm_aggregate",
    "ms_deform_attn",
    "nonuniform_upsample",
    "rasterize",
    "resample",
    "resize_positions",
    "saliency_grid",
]
