"""The built-in ``cpu`` backend: fused CPU paths of the ops whose reference is slow there.

Picked by ``backend="auto"`` (the default) for CPU tensors; ``backend="cpu"`` or
``SFM_BACKEND=cpu`` forces it, ``"reference"`` avoids it. Every op computes the reference's
function (tested against it, forward and backward). The kernels are numba's when the ``cpu``
extra is installed (``pip install sfm-core[cpu]``; compiled on first use and cached), otherwise
plain PyTorch: sfm-core itself needs nothing but PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sfm_core.backends import Backend
from sfm_core.cpu.high_pass import box_high_pass
from sfm_core.cpu.lprm import lprm_aggregate, lprm_gated_aggregate
from sfm_core.cpu.sampler import resample

NAME = "cpu"

OPS: dict[str, Callable[..., Any]] = {
    "box_high_pass": box_high_pass,
    "lprm_aggregate": lprm_aggregate,
    "lprm_gated_aggregate": lprm_gated_aggregate,
    "resample": resample,
}


def device_reason(device: torch.device) -> str | None:
    return None if device.type == "cpu" else f"the cpu backend runs on CPU tensors, not {device}"


# resample: exact, but one-thread timings on a loaded machine did not show it faster than aten
# at ResNet-50's res3 size (fast at res4), so ``auto`` keeps aten's grid_sample for it.
FORCED_ONLY = frozenset({"resample"})

BACKEND = Backend(NAME, ops=OPS, check=device_reason, forced_only=FORCED_ONLY)
