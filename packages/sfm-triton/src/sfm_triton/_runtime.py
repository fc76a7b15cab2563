"""Where the kernels can run, and the argument checks that keep them from running anywhere else.

Triton decides at decoration time whether a kernel is compiled for the GPU or run by its CPU
interpreter, so :data:`INTERPRET` is read once, when this package is imported: set
``TRITON_INTERPRET=1`` before importing :mod:`sfm_triton` to run the kernels on CPU tensors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache

import torch
import triton

INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

CPU_WITHOUT_INTERPRETER = (
    "sfm_triton kernels need a CUDA device; to run them on the CPU (slowly, for tests) set "
    "TRITON_INTERPRET=1 before importing sfm_triton"
)


def autotune_configs(configs: Sequence[triton.Config]) -> list[triton.Config]:
    """All ``configs`` on a GPU; only the first under the interpreter.

    The autotuner cannot benchmark under the interpreter, and skips benchmarking when it has a
    single config, so the first config of every list must be valid for any shape.
    """
    if not configs:
        raise ValueError("configs must not be empty")
    return list(configs[:1]) if INTERPRET else list(configs)


@cache
def _cuda_reason() -> str | None:
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        triton.runtime.driver.active.get_current_target()
    except RuntimeError as error:  # Triton's "0 active drivers"
        return f"Triton has no active GPU driver ({error})"
    return None


def device_reason(device: torch.device) -> str | None:
    """``None`` when the kernels can run on ``device``, else why not (a user-facing sentence)."""
    if device.type == "cpu":
        return None if INTERPRET else CPU_WITHOUT_INTERPRETER
    if device.type == "cuda":
        return _cuda_reason()
    return f"sfm_triton kernels run on CUDA devices (or on the CPU under TRITON_INTERPRET=1), not on {device.type}"


def check_device(**tensors: torch.Tensor) -> torch.device:
    """The one device of the named tensors, or a ValueError naming the argument that cannot run."""
    devices = {name: tensor.device for name, tensor in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"tensors must be on the same device, got {listing}")
    name, device = next(iter(devices.items()))
    reason = device_reason(device)
    if reason is not None:
        raise ValueError(f"{name} is on {device}: {reason}")
    return device


def check_dtype(
    name: str, tensor: torch.Tensor, allowed: Sequence[torch.dtype] = SUPPORTED_DTYPES
) -> None:
    """Raise a TypeError unless ``tensor`` has one of the ``allowed`` dtypes."""
    if tensor.dtype not in allowed:
        names = ", ".join(str(dtype).removeprefix("torch.") for dtype in allowed)
        raise TypeError(
            f"{name} must have dtype {names} in sfm_triton (use the reference backend for others), "
            f"got {tensor.dtype}"
        )


def cdiv(a: int, b: int) -> int:
    """Ceil division, for launch grids."""
    return -(-a // b)
