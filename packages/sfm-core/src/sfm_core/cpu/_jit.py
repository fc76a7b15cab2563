"""Whether the numba kernels run: numba installed (the ``cpu`` extra) and not switched off.

``SFM_CPU_JIT=0`` switches them off (the plain-PyTorch fallbacks run instead), for comparisons
and for tests of the fallback in an environment that has numba.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

JIT_ENV = "SFM_CPU_JIT"


def numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def kernels(name: str) -> ModuleType | None:
    """The numba kernel module ``sfm_core.cpu.<name>``, or ``None`` for the fallback."""
    if os.environ.get(JIT_ENV, "1") == "0" or not numba_installed():
        return None
    return importlib.import_module(f"sfm_core.cpu.{name}")
