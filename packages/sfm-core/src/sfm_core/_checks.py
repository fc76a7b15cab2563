"""Argument checks shared by every public function: one wording for every error message."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    name: str,
    value: object,
    *,
    ndim: int,
    floating: bool = True,
    shape_hint: str = "",
) -> torch.Tensor:
    """Return ``value`` if it is a tensor of rank ``ndim`` (and floating when asked), else raise."""
    hint = f" {shape_hint}" if shape_hint else ""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{hint}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor{hint}, got shape {tuple(value.shape)}")
    if floating and value.dtype not in _FLOATING:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {value.dtype}"
        )
    return value


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise if the named tensors do not all live on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on the same device, got {listing}")


def check_same_batch(**tensors: torch.Tensor) -> None:
    """Raise if the named tensors disagree in their first (batch) dimension."""
    sizes = {name: int(t.shape[0]) for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{n}={s}" for n, s in sizes.items())
        raise ValueError(f"batch sizes must agree, got {listing}")


# Sizes, counts and lengths above this are refused before torch sees them (it would overflow or
# try to allocate exabytes): 2**31 - 1, the largest index a 32-bit kernel can address.
MAX_INT = 2**31 - 1


def check_size(name: str, value: object) -> tuple[int, int]:
    """Return ``value`` as ``(height, width)`` of positive ints (at most ``MAX_INT``), else raise."""
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name} must be a (height, width) pair of ints, got {value!r}")
    height, width = value
    if height < 1 or width < 1 or height > MAX_INT or width > MAX_INT:
        raise ValueError(f"{name} must be positive and at most {MAX_INT}, got {value!r}")
    return int(height), int(width)


def check_positive(
    name: str, value: object, *, integer: bool = False, maximum: float | None = None
) -> None:
    """Raise unless ``value`` is a finite positive number (an int when ``integer``) <= ``maximum``.

    Ints are bounded by ``MAX_INT`` when no ``maximum`` is given; NaN and infinities are refused.
    """
    wanted = int if integer else int | float
    kind = "a positive int" if integer else "a positive number"
    if (
        isinstance(value, bool)
        or not isinstance(value, wanted)
        or (isinstance(value, float) and not math.isfinite(value))
        or value <= 0
    ):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    limit = maximum if maximum is not None else (MAX_INT if isinstance(value, int) else None)
    if limit is not None and value > limit:
        raise ValueError(f"{name} must be {kind} at most {limit}, got {value!r}")


def check_nonempty_map(name: str, value: torch.Tensor, shape_hint: str) -> None:
    """Raise unless the last two (spatial) sizes of ``value`` are at least 1.

    An empty batch or channel axis gives an empty result; a map without pixels has nothing to
    sample, filter or normalise, so it is refused here instead of deep inside torch.
    """
    if value.shape[-2] < 1 or value.shape[-1] < 1:
        raise ValueError(f"{name} must have H, W >= 1 {shape_hint}, got shape {tuple(value.shape)}")


def check_is_tensor(**values: object) -> None:
    """Raise a TypeError naming the first argument that is not a tensor (before any dispatch)."""
    for name, value in values.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference computes in: at least float32, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)
