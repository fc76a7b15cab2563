"""The ``triton`` backend that sfm-core finds through the ``sfm_core.backends`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sfm_core.backends import Backend
from sfm_triton._runtime import device_reason

OPS: dict[str, Callable[..., Any]] = {}

BACKEND = Backend("triton", ops=OPS, check=device_reason)
