"""Argument checks shared by the modules: features against the module that will consume them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from sfm_core._checks import check_nonempty_map, check_positive, check_tensor
from sfm_core.backends import requested_backend


def check_features(
    name: str, value: object, *, channels: int, module: nn.Module, shape_hint: str
) -> torch.Tensor:
    """Return ``value`` if it is a floating 4-D map with ``channels`` channels that ``module`` can take.

    Batch 0 passes (modules return an empty batch); ``H`` or ``W`` of 0 is refused.
    The tensor must sit on the module's device and, unless autocast is on for that device, have the
    module's parameter dtype (otherwise torch fails deep inside a convolution with a message that
    names no argument).
    """
    x = check_tensor(name, value, ndim=4, shape_hint=shape_hint)
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channels {shape_hint}, got shape {tuple(x.shape)}"
        )
    check_nonempty_map(name, x, shape_hint)
    parameter = next(module.parameters(), None)
    if parameter is None:
        return x
    if x.device != parameter.device:
        raise ValueError(
            f"{name} must be on the module's device {parameter.device}, got {x.device}"
        )
    if x.dtype != parameter.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{name} must have the module's dtype {parameter.dtype} (or run under autocast), "
            f"got {x.dtype}"
        )
    return x


def check_channels(name: str, value: object) -> int:
    """Return ``value`` if it is a positive channel count, else raise."""
    check_positive(name, value, integer=True)
    return cast(int, value)


def check_dilations(value: object, name: str = "dilations") -> tuple[int, ...]:
    """Return ``value`` as a non-empty tuple of positive ints, else raise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    for dilation in value:
        check_positive(name, dilation, integer=True)
    return tuple(int(d) for d in value)


def check_backend(backend: object) -> str | None:
    """Validate a module's ``backend`` early (at construction), so a typo fails before training."""
    if backend is None:
        return None
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    requested_backend(backend)
    return backend
