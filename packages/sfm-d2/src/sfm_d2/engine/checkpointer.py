"""``SFMCheckpointer``: detectron2's checkpointer made crash-safe and safe to point at strangers' files.

* Writes are atomic: each file (the checkpoint, its ``.sha256`` digest, the ``last_checkpoint``
  pointer) goes to a hidden temporary file in the same folder, is flushed and fsynced, renamed over
  its name, and the folder is fsynced. A kill at any moment leaves every name either old or new.
  Files get mode 0666 less the umask, as detectron2's own checkpoints do.
* The digest catches what ``torch.load`` does not: flipped bytes inside tensor data load silently
  (torch does not check the zip CRCs). Files without a digest (from elsewhere) load unverified.
* Loading goes through :mod:`sfm_d2.safe_load` (``weights_only``; model-zoo ``.pkl`` by a
  restricted unpickler; code-running pickles only with ``SFM_ALLOW_UNSAFE_PICKLE=1``).
* ``resume_or_load(resume=True)`` falls back from a damaged checkpoint to the newest good one,
  logging which, and stops with a message listing every file and its problem when none is good.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from typing import IO, Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from sfm_d2.safe_load import CorruptCheckpointError, load_checkpoint_dict

POINTER = "last_checkpoint"
DIGEST_SUFFIX = ".sha256"
TEMP_PREFIX = ".sfm-tmp-"
# Fault injection for the kill tests: seconds to sleep after a checkpoint's temporary file is
# complete and before it is renamed (a SIGKILL in that window must not lose anything).
PAUSE_ENV = "SFM_CHECKPOINT_WRITE_PAUSE_S"
_ITERATION = re.compile(r"_(\d+)\.pth$")

logger = logging.getLogger(__name__)


def _fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _create_temporary(folder: str, prefix: str) -> tuple[int, str]:
    """A new file in ``folder`` opened for writing, with the mode ``open()`` would give it.

    ``tempfile.mkstemp`` makes 0600 files whatever the umask; here the kernel applies the umask
    to 0666, as for detectron2's checkpoints (0644 under the usual umask 022).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        temporary = os.path.join(folder, prefix + secrets.token_hex(4))
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue


def atomic_write(path: str, write: Callable[[IO[bytes]], None], *, pause_s: float = 0.0) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, all or nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = _create_temporary(folder, TEMP_PREFIX + os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if pause_s > 0:
            time.sleep(pause_s)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


class _HashingWriter:
    """A write-only file that passes bytes through and hashes them (no second read of the file)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_digest(path: str) -> None:
    """Raise :class:`CorruptCheckpointError` if ``path`` has a ``.sha256`` file that disagrees."""
    digest_path = path + DIGEST_SUFFIX
    if not os.path.isfile(digest_path):
        return
    with open(digest_path) as file:
        expected = file.read().split()[0] if os.path.getsize(digest_path) else ""
    if file_sha256(path) != expected:
        raise CorruptCheckpointError(
            f"{path}: content differs from its digest {digest_path} (damaged on disk)"
        )


def _write_pause_s() -> float:
    value = os.environ.get(PAUSE_ENV, "")
    try:
        return float(value) if value else 0.0
    except ValueError:
        raise ValueError(f"{PAUSE_ENV} must be a number of seconds, got {value!r}") from None


def _recency(name: str) -> tuple[int, int]:
    """Sort key, newest first: model_final, then by the iteration in the name, then the rest."""
    if name == "model_final.pth":
        return (2, 0)
    match = _ITERATION.search(name)
    return (1, int(match.group(1))) if match else (0, 0)


class SFMCheckpointer(DetectionCheckpointer):  # type: ignore[misc]
    """``DetectionCheckpointer`` with atomic writes, digests, safe loading and resume fallback."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, checkpointable in self.checkpointables.items():
            data[key] = checkpointable.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        writers: list[_HashingWriter] = []

        def write(file: IO[bytes]) -> None:
            writers.append(_HashingWriter(file))
            torch.save(data, writers[-1])

        atomic_write(path, write, pause_s=_write_pause_s())
        line = f"{writers[-1].sha256.hexdigest()}  {basename}\n".encode()
        atomic_write(path + DIGEST_SUFFIX, lambda file: file.write(line))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        pointer = os.path.join(self.save_dir, POINTER)
        atomic_write(pointer, lambda file: file.write(last_filename_basename.encode()))

    def _load_file(self, filename: str) -> dict[str, Any]:
        verify_digest(filename)
        loaded = load_checkpoint_dict(filename)
        if filename.endswith(".pkl"):
            return self._from_pickle(filename, loaded)
        return loaded if "model" in loaded else {"model": loaded}

    def _from_pickle(self, filename: str, data: dict[str, Any]) -> dict[str, Any]:
        """detectron2's reading of ``.pkl`` files (its own model zoo, or Caffe2 / Detectron1)."""
        if "model" in data and "__author__" in data:
            self.logger.info("Reading a file from '%s'", data["__author__"])
            return data
        if "blobs" in data:
            data = data["blobs"]
        blobs = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        self.remove_stale_temporaries()
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=False)  # type: ignore[no-any-return]
        problems = []
        for candidate in self.resume_candidates():
            try:
                checkpoint = self._load_file(candidate)
            except (CorruptCheckpointError, OSError) as error:
                problems.append(str(error))
                self.logger.warning("cannot resume from %s: %s", candidate, error)
                continue
            if problems:
                self.logger.warning("resuming from %s, the newest readable checkpoint", candidate)
            return self._restore(candidate, checkpoint)
        raise CorruptCheckpointError(
            f"--resume found no readable checkpoint in {self.save_dir} "
            f"({POINTER} names {self.get_checkpoint_file()!r}):\n  "
            + "\n  ".join(problems or ["no .pth files"])
            + "\nremove the damaged files, or start afresh without --resume"
        )

    def resume_candidates(self) -> list[str]:
        """The pointer's file first, then every other ``.pth`` in the folder, newest first."""
        named = self.get_checkpoint_file()
        others = sorted(
            (p for p in self.get_all_checkpoint_files() if os.path.abspath(p) != named),
            key=lambda p: _recency(os.path.basename(p)),
            reverse=True,
        )
        return [named, *others] if named else others

    def get_checkpoint_file(self) -> str:
        named = super().get_checkpoint_file()
        return os.path.abspath(named) if named else ""

    def remove_stale_temporaries(self) -> None:
        """Delete the temporary files a killed writer left (only rank 0 writes, so only it cleans)."""
        if not (self.save_to_disk and self.save_dir and os.path.isdir(self.save_dir)):
            return
        for name in os.listdir(self.save_dir):
            if name.startswith(TEMP_PREFIX):
                self.logger.info("removing %s, left by an interrupted checkpoint write", name)
                os.unlink(os.path.join(self.save_dir, name))

    def _restore(self, path: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """What ``Checkpointer.load`` does after reading the file: model, then checkpointables."""
        self.logger.info("[Checkpointer] Loading from %s ...", path)
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key in self.checkpointables:
            if key in checkpoint:
                self.logger.info("Loading %s from %s ...", key, path)
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint
