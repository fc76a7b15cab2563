"""The ``triton`` backend that sfm-core finds through the ``sfm_core.backends`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sfm_core.backends import Backend
from sfm_triton._runtime import device_reason
from sfm_triton.ops.lprm import lprm_aggregate
from sfm_triton.ops.ms_deform_attn import ms_deform_attn
from sfm_triton.ops.nonuniform import nonuniform_upsample
from sfm_triton.ops.resample import resample
from sfm_triton.ops.saliency import saliency_grid

OPS: dict[str, Callable[..., Any]] = {
    "lprm_aggregate": lprm_aggregate,
    "ms_deform_attn": ms_deform_attn,
    "nonuniform_upsample": nonuniform_upsample,
    "resample": resample,
    "saliency_grid": saliency_grid,
}

BACKEND = Backend("triton", ops=OPS, check=device_reason)
