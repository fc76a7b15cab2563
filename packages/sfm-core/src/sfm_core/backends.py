"""Backend selection for the public ops: the reference, the built-in ``cpu`` backend, or a plug-in.

A plug-in package (sfm-triton) declares an entry point in the group ``sfm_core.backends`` that
names a :class:`Backend`; sfm-core never imports it by name. The ``cpu`` backend
(:mod:`sfm_core.cpu`) is built in. The choice per call is, in order: the ``backend=`` argument,
the ``SFM_BACKEND`` environment variable, then ``"auto"``: a plug-in for CUDA tensors when one is
installed, the ``cpu`` backend for CPU tensors (for the ops it has; not while ``torch.jit.trace``
records, so a traced graph shows the reference's aten ops, which FLOP counters know), the
reference otherwise.

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
from torch.jit._trace import is_tracing

ENTRY_POINT_GROUP = "sfm_core.backends"
BACKEND_ENV = "SFM_BACKEND"
REFERENCE = "reference"
AUTO = "auto"
CPU = "cpu"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """A set of op implementations with the reference's signatures.

    ``check(device)`` returns ``None`` when the backend can run on ``device``, otherwise the reason
    it cannot (shown to the user when the backend was forced). ``forced_only`` names ops that run
    only when the backend is asked for by name; ``"auto"`` leaves them to the reference (an
    implementation that is exact but not measured faster).
    """

    name: str
    ops: dict[str, Callable[..., Any]]
    check: Callable[[torch.device], str | None] = field(default=lambda device: None)
    forced_only: frozenset[str] = frozenset()

    def picks(self, op: str) -> bool:
        """Whether ``"auto"`` runs ``op`` here (given a device the backend can run on)."""
        return op in self.ops and op not in self.forced_only


_loaded: dict[str, Backend] | None = None


def plugins() -> dict[str, Backend]:
    """The built-in ``cpu`` backend and the installed plug-ins, by name (read once per process)."""
    global _loaded
    if _loaded is None:
        _loaded = _discover()
    return _loaded


def forget_plugins() -> None:
    """Drop the loaded plug-ins, so the next call reads the entry points again (for tests)."""
    global _loaded
    _loaded = None


def _discover() -> dict[str, Backend]:
    from sfm_core.cpu import BACKEND as CPU_BACKEND  # the built-in one; it imports this module

    found: dict[str, Backend] = {CPU: CPU_BACKEND}
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


def resolve(op: str, device: torch.device, backend: str | None) -> Backend | None:
    """The backend that runs ``op`` for tensors on ``device`` (``None``: the reference)."""
    choice = requested_backend(backend)
    if choice == REFERENCE:
        return None
    if choice == AUTO:
        if device.type == "cpu":
            cpu = plugins()[CPU]
            return cpu if cpu.picks(op) and not is_tracing() else None
        if device.type == "cuda":
            for candidate in plugins().values():
                if candidate.picks(op) and candidate.check(device) is None:
                    return candidate
        return None
    plugin = plugins()[choice]
    reason = plugin.check(device)
    if reason is not None:
        raise RuntimeError(f"the {choice!r} backend cannot run {op} on {device}: {reason}")
    if op not in plugin.ops:
        raise RuntimeError(f"the {choice!r} backend does not implement {op}")
    return plugin


def implementation(
    op: str, device: torch.device, backend: str | None, reference: Callable[..., Any]
) -> Callable[..., Any]:
    """The function that runs ``op`` for tensors on ``device`` under the requested backend."""
    chosen = resolve(op, device, backend)
    _log_choice(op, REFERENCE if chosen is None else chosen.name)
    return reference if chosen is None else chosen.ops[op]
