"""Let detectron2 run on current numpy, Pillow and setuptools, before anything imports it.

detectron2 still uses names that its dependencies removed since: 0.6 uses
``np.int``/``np.float``/``np.bool`` (numpy 1.24) and ``PIL.Image.LINEAR`` (Pillow 10); 0.6 and
the main branch (measured at commit 02b5c4e) import ``pkg_resources`` in ``model_zoo`` (setuptools
82). :func:`apply` restores a name only when it is missing AND the installed detectron2's source
uses it: on main it applies nothing with setuptools<82 and only the ``pkg_resources`` stand-in
with setuptools>=82 (packages/sfm-d2/README.md has the measured table). It never imports
detectron2 itself."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

# Fix name -> regular expression that finds a use of the removed name in detectron2's source.
_USES: dict[str, re.Pattern[str]] = {
    "numpy.int": re.compile(r"\bnp\.int\b(?![\w])"),
    "numpy.float": re.compile(r"\bnp\.float\b(?![\w])"),
    "numpy.bool": re.compile(r"\bnp\.bool\b(?![\w])"),
    "PIL.Image.LINEAR": re.compile(r"\bImage\.LINEAR\b"),
    "pkg_resources": re.compile(r"^\s*(import pkg_resources|from pkg_resources import)", re.M),
}

_applied: list[str] = []


def uses_in(roots: Iterable[str | Path]) -> frozenset[str]:
    """Which of the removed names the Python files under ``roots`` use."""
    found: set[str] = set()
    for root in roots:
        for path in Path(root).rglob("*.py"):
            text = path.read_text(encoding="utf-8", errors="replace")
            found.update(name for name, pattern in _USES.items() if pattern.search(text))
            if len(found) == len(_USES):
                return frozenset(found)
    return frozenset(found)


@cache
def detectron2_uses() -> frozenset[str]:
    """:func:`uses_in` the installed detectron2 (empty when there is none), without importing it."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    return uses_in(spec.submodule_search_locations)


def _numpy_alias(name: str, value: type) -> Callable[[], bool]:
    def fix() -> bool:
        import numpy as np

        # Look in the module dict: numpy's __getattr__ raises (or warns) for removed aliases.
        if name in np.__dict__:
            return False
        setattr(np, name, value)
        return True

    return fix


def _pil_linear() -> bool:
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    return True


def minimal_pkg_resources() -> types.ModuleType:
    """A ``pkg_resources`` with only what detectron2.model_zoo calls (``resource_filename``)."""
    shim = types.ModuleType("pkg_resources", "sfm_d2's minimal stand-in for setuptools<82's module")

    def resource_filename(package: str, resource: str) -> str:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"package {package!r} not found")
        return str(Path(next(iter(spec.submodule_search_locations))) / resource)

    def missing(attr: str) -> object:
        raise AttributeError(
            f"pkg_resources.{attr} is unavailable: sfm_d2 installed a minimal pkg_resources "
            "(only resource_filename) because setuptools>=82 removed the module; install "
            "'setuptools<82' for the full one"
        )

    shim.resource_filename = resource_filename  # type: ignore[attr-defined]
    shim.__getattr__ = missing  # type: ignore[method-assign]
    return shim


def _pkg_resources() -> bool:
    # A module already imported (the real one, or this stand-in from an earlier call) is kept.
    # find_spec would raise for the stand-in: a module made at run time has no __spec__.
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return False
    sys.modules["pkg_resources"] = minimal_pkg_resources()
    return True


_FIXES: dict[str, Callable[[], bool]] = {
    "numpy.int": _numpy_alias("int", int),
    "numpy.float": _numpy_alias("float", float),
    "numpy.bool": _numpy_alias("bool", bool),
    "PIL.Image.LINEAR": _pil_linear,
    "pkg_resources": _pkg_resources,
}


def apply() -> tuple[str, ...]:
    """Apply the fixes this detectron2 needs here; return the names of those applied by this call.

    Idempotent: a second call applies nothing and returns ``()``.
    """
    needed = detectron2_uses()
    done = tuple(name for name, fix in _FIXES.items() if name in needed and fix())
    _applied.extend(done)
    return done


def applied() -> tuple[str, ...]:
    """Every fix applied in this process so far (for logs and environment reports)."""
    return tuple(_applied)
