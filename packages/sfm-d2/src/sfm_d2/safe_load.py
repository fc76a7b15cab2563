"""Load checkpoints from strangers without running their code.

A ``.pth`` is read with ``torch.load(weights_only=True)`` (tensors, numbers, strings and plain
containers). A ``.pkl`` (detectron2's model-zoo format: a pickled dict of numpy arrays) is read
with an unpickler that builds only numpy arrays, numpy scalars and ``OrderedDict``. A file that
needs anything else would run code while loading, so it is refused unless the user opts in with
``SFM_ALLOW_UNSAFE_PICKLE=1`` (do that only for files you trust: a pickle can do anything your
account can). A file that cannot be read at all (truncated, bit rot, not a checkpoint) raises
:class:`CorruptCheckpointError`; either error names the file.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import re
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
import torch

ALLOW_UNSAFE_ENV = "SFM_ALLOW_UNSAFE_PICKLE"
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core

# (module, name) a model-zoo pickle may reference -> the object it gets. Both spellings of numpy's
# core module appear in files: numpy 1 wrote "numpy.core", numpy 2 writes "numpy._core".
_ZOO_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Python 3 pickles of protocol <= 2 store raw bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): codecs.encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ZOO_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _NUMPY_CORE.multiarray._reconstruct
    _ZOO_GLOBALS[(f"{_core}.multiarray", "scalar")] = _NUMPY_CORE.multiarray.scalar
    _ZOO_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _NUMPY_CORE.numeric._frombuffer


# torch's weights-only failure text: the reason sits after "WeightsUnpickler error:", around it
# torch advises re-running with weights_only=False, which this module must never suggest.
_WEIGHTS_ONLY_REASON = re.compile(
    r"WeightsUnpickler error:\s*(?P<reason>.*?)\s*(?:Check the documentation|$)", re.DOTALL
)


class UnsafeCheckpointError(ValueError):
    """The file would run code when unpickled; it was not loaded."""


class CorruptCheckpointError(ValueError):
    """The file is not a readable checkpoint (truncated, damaged, or not a checkpoint)."""


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class ModelZooUnpickler(pickle.Unpickler):
    """Builds numpy arrays, numpy scalars and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ZOO_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def unsafe_allowed() -> bool:
    """True when ``SFM_ALLOW_UNSAFE_PICKLE`` is ``1``/``true``/``yes`` (the user's explicit opt-in)."""
    return os.environ.get(ALLOW_UNSAFE_ENV, "").strip().lower() in ("1", "true", "yes")


def _refusal(path: str, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: refused to load: it holds {what}, and unpickling it could run arbitrary code. "
        f"If you trust the file, set {ALLOW_UNSAFE_ENV}=1 (or re-save its tensors with torch.save "
        "of a plain state dict)"
    )


def _load_pkl(file: IO[bytes], path: str, allow_unsafe: bool) -> Any:
    if allow_unsafe:
        return pickle.load(file, encoding="latin1")  # the user opted in
    try:
        return ModelZooUnpickler(file, encoding="latin1").load()
    except _RefusedGlobal as error:
        raise _refusal(path, f"the Python object {error}") from None


def _load_pth(path: str, allow_unsafe: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the first global it refused ("... GLOBAL posix.system ..."); any other
        # weights-only failure (an unknown opcode, a truncated stream) is damage, not danger.
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused is None:
            raise
        if not allow_unsafe:
            raise _refusal(path, f"the Python object {refused.group(1)}") from None
    return torch.load(path, map_location="cpu", weights_only=False)  # the user opted in


def load_checkpoint(path: str | os.PathLike[str], *, allow_unsafe: bool | None = None) -> Any:
    """The object stored in ``path`` (``.pkl``: model-zoo pickle; anything else: ``torch.save``).

    ``allow_unsafe=None`` reads the ``SFM_ALLOW_UNSAFE_PICKLE`` opt-in. Raises
    :class:`UnsafeCheckpointError` for a file that would run code, :class:`CorruptCheckpointError`
    for one that cannot be read, ``FileNotFoundError`` for a missing one.
    """
    path = os.fspath(path)
    if allow_unsafe is None:
        allow_unsafe = unsafe_allowed()
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as file:
                return _load_pkl(file, path, allow_unsafe)
        return _load_pth(path, allow_unsafe)
    except (UnsafeCheckpointError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as error:  # every parser failure of a damaged file lands here
        raise CorruptCheckpointError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {_reason(error)})"
        ) from error


def _reason(error: Exception) -> str:
    """The parser's reason, without torch's advice to load with ``weights_only=False``."""
    text = str(error)
    match = _WEIGHTS_ONLY_REASON.search(text)
    if match:
        return match.group("reason") or "the weights-only unpickler stopped"
    if "weights_only" in text:  # a torch message of another shape: drop it whole
        return "the weights-only unpickler stopped"
    return text


def load_checkpoint_dict(
    path: str | os.PathLike[str], *, allow_unsafe: bool | None = None
) -> dict[str, Any]:
    """:func:`load_checkpoint`, and the result must be a dict (every checkpoint format is)."""
    loaded = load_checkpoint(path, allow_unsafe=allow_unsafe)
    if not isinstance(loaded, Mapping):
        raise CorruptCheckpointError(
            f"{os.fspath(path)}: a checkpoint must hold a dict, got {type(loaded).__name__}"
        )
    return dict(loaded)
