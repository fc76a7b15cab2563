"""Backend selection for the public ops: the reference, or a plug-in found by entry point.

A plug-in package (sfm-triton) declares an entry point in the group ``sfm_core.backends`` that
names a :class:`Backend`; sfm-core never imports it by name. The choice per call is, in order:
the ``backend=`` argument, the ``SFM_BACKEND`` environment variable, then ``"auto"`` (a plug-in
for CUDA tensors when one is installed, the reference otherwise).

Plug-ins are loaded once, when :mod:`sfm_core.ops` is imported, so that choosing a backend inside
a ``torch.compile``-d region is plain dictionary work that Dynamo can trace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch

ENTRY_POINT_GROUP = "sfm_core.backends"
BACKEND_ENV = "SFM_BACKEND"
REFERENCE = "reference"
AUTO = "auto"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """A set of op implementations with the reference's signatures.

    ``check(device)`` returns ``None`` when the backend can run on ``device``, otherwise the reason
    it cannot (shown to the user when the backend was forced).
    """

    name: str
    ops: dict[str, Callable[..., Any]]
    check: Callable[[torch.device], str | None] = field(default=lambda device: None)


_loaded: dict[str, Backend] | None = None


def plugins() -> dict[str, Backend]:
    """Installed plug-in backends by name (entry points are read once per process)."""
    global _loaded
    if _loaded is None:
        _loaded = _discover()
    return _loaded


def forget_plugins() -> None:
    """Drop the loaded plug-ins, so the next call reads the entry points again (for tests)."""
    global _loaded
    _loaded = None


def _discover() -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        backend = point.load()
        if not isinstance(backend, Backend):
            raise TypeError(
                f"entry point {point.name!r} in {ENTRY_POINT_GROUP} must name a "
                f"sfm_core.backends.Backend, got {type(backend).__name__}"
            )
        found[backend.name] = backend
    return found


def requested_backend(backend: str | None) -> str:
    """The backend asked for by argument or environment, validated."""
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, AUTO)
    valid = {REFERENCE, AUTO, *plugins()}
    if choice not in valid:
        source = "backend" if backend is not None else BACKEND_ENV
        raise ValueError(f"{source} must be one of {sorted(valid)}, got {choice!r}")
    return choice


_logged: set[tuple[str, str]] = set()


def _log_choice(op: str, name: str) -> None:
    if torch.compiler.is_compiling() or (op, name) in _logged:
        return
    _logged.add((op, name))
    log.info("sfm op %s uses the %s backend", op, name)


def implementation(
    op: str, device: torch.device, backend: str | None, reference: Callable[..., Any]
) -> Callable[..., Any]:
    """The function that runs ``op`` for tensors on ``device`` under the requested backend."""
    choice = requested_backend(backend)
    if choice == REFERENCE:
        chosen_name, chosen = REFERENCE, reference
    elif choice == AUTO:
        chosen_name, chosen = REFERENCE, reference
        if device.type == "cuda":
            for candidate in plugins().values():
                if op in candidate.ops and candidate.check(device) is None:
                    chosen_name, chosen = candidate.name, candidate.ops[op]
                    break
    else:
        plugin = plugins()[choice]
        reason = plugin.check(device)
        if reason is not None:
            raise RuntimeError(f"the {choice!r} backend cannot run {op} on {device}: {reason}")
        if op not in plugin.ops:
            raise RuntimeError(f"the {choice!r} backend does not implement {op}")
        chosen_name, chosen = choice, plugin.ops[op]
    _log_choice(op, chosen_name)
    return chosen
