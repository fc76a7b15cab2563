"""Checkpoints: atomic writes, damaged files found and skipped on resume, strangers' pickles refused.

Each damaged-file case is a real file on disk (truncated, emptied, a flipped byte inside tensor
data, text, a non-dict, a pointer to nothing); resume must fall back to the newest good checkpoint.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sfm_d2.checkpoint import save_converted
from sfm_d2.engine.checkpointer import (
    DIGEST_SUFFIX,
    POINTER,
    TEMP_PREFIX,
    SFMCheckpointer,
    atomic_write,
    file_sha256,
)
from sfm_d2.safe_load import (
    ALLOW_UNSAFE_ENV,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)


def trained_steps(folder: Path, steps: int) -> tuple[Tiny, SFMCheckpointer, list[dict[str, Any]]]:
    """A model trained ``steps`` AdamW steps, checkpointed after each; the states saved."""
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    checkpointer = SFMCheckpointer(model, str(folder), optimizer=optimizer)
    states = []
    for step in range(steps):
        model.fc(torch.randn(2, 3)).square().sum().backward()
        optimizer.step()
        checkpointer.save(f"model_{step:07d}", iteration=step)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return model, checkpointer, states


def resume(folder: Path) -> tuple[Tiny, dict[str, Any]]:
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    extra = SFMCheckpointer(model, str(folder), optimizer=optimizer).resume_or_load("")
    return model, extra


def test_save_writes_file_digest_and_pointer_and_no_temporaries(tmp_path: Path) -> None:
    _, _, states = trained_steps(tmp_path, 2)
    names = sorted(os.listdir(tmp_path))
    assert names == [
        POINTER,
        "model_0000000.pth",
        "model_0000000.pth" + DIGEST_SUFFIX,
        "model_0000001.pth",
        "model_0000001.pth" + DIGEST_SUFFIX,
    ]
    assert (tmp_path / POINTER).read_text() == "model_0000001.pth"
    digest, name = (tmp_path / ("model_0000001.pth" + DIGEST_SUFFIX)).read_text().split()
    assert name == "model_0000001.pth"
    assert digest == file_sha256(str(tmp_path / name))  # the streamed hash is the file's
    saved = torch.load(tmp_path / name, weights_only=True)  # plain tensors and containers
    assert saved["iteration"] == 1
    assert "optimizer" in saved
    model, extra = resume(tmp_path)
    assert extra["iteration"] == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in states[1].items())


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write(str(target), lambda file: file.write(b"old"))

    def half_then_crash(file: Any) -> None:
        file.write(b"new, half writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), half_then_crash)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _flip_tensor_byte(path: Path) -> None:
    """A flipped byte in tensor data: torch.load reads it without complaint; the digest does not."""
    weight = torch.load(path, weights_only=True)["model"]["fc.weight"]
    data = bytearray(path.read_bytes())
    offset = data.find(weight.numpy().tobytes())
    assert offset > 0
    data[offset + 1] ^= 0xFF
    path.write_bytes(bytes(data))


def _text(path: Path) -> None:
    path.write_text("<html>404 not found</html>")


def _not_a_dict(path: Path) -> None:
    torch.save([1, 2, 3], path)
    (path.parent / (path.name + DIGEST_SUFFIX)).unlink()


def _deleted(path: Path) -> None:
    path.unlink()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "empty": _empty,
    "flipped byte in tensor data": _flip_tensor_byte,
    "text instead of a checkpoint": _text,
    "a list instead of a dict": _not_a_dict,
    "pointer names a deleted file": _deleted,
}


def test_a_flipped_byte_loads_silently_without_the_digest(tmp_path: Path) -> None:
    """Why the digest exists: torch.load does not check the zip's CRCs."""
    _, _, states = trained_steps(tmp_path, 1)
    path = tmp_path / "model_0000000.pth"
    _flip_tensor_byte(path)
    loaded = torch.load(path, weights_only=True)["model"]
    assert any(not torch.equal(loaded[k], v) for k, v in states[0].items())
    with pytest.raises(CorruptCheckpointError, match="differs from its digest"):
        SFMCheckpointer(Tiny()).load(str(path))


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_falls_back_to_the_newest_good_checkpoint(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, states = trained_steps(tmp_path, 3)
    newest = tmp_path / "model_0000002.pth"
    DAMAGE[damage](newest)
    with caplog.at_level(logging.WARNING):
        model, extra = resume(tmp_path)
    assert extra["iteration"] == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in states[1].items())
    assert f"cannot resume from {newest}" in caplog.text  # the damaged file, by its path
    assert f"resuming from {tmp_path / 'model_0000001.pth'}" in caplog.text


def test_resume_stops_with_every_file_and_problem_when_none_is_good(tmp_path: Path) -> None:
    trained_steps(tmp_path, 2)
    for name, damage in (("model_0000000.pth", _truncate), ("model_0000001.pth", _text)):
        damage(tmp_path / name)
    with pytest.raises(CorruptCheckpointError) as raised:
        resume(tmp_path)
    message = str(raised.value)
    assert "--resume found no readable checkpoint" in message
    assert str(tmp_path / "model_0000000.pth") in message
    assert str(tmp_path / "model_0000001.pth") in message
    assert "without --resume" in message


def test_resume_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    _, _, states = trained_steps(tmp_path, 1)
    stale = tmp_path / f"{TEMP_PREFIX}model_0000001.pthx8a2"
    stale.write_bytes(b"half a checkpoint")
    model, _ = resume(tmp_path)
    assert not stale.exists()
    assert torch.equal(model.fc.weight, states[0]["fc.weight"])


# ---- untrusted files -------------------------------------------------------------------------


class RunsCode:
    """Unpickling this creates a folder: proof that the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_a_pth_that_runs_code_is_refused_by_default(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "extra": RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=f"{path}: refused to load.*posix.mkdir"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match=ALLOW_UNSAFE_ENV):
        SFMCheckpointer(Tiny()).load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pkl_that_runs_code_is_refused_by_default(protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    zoo = {"model": {"fc.weight": np.ones((4, 3), np.float32)}, "__author__": "x"}
    path.write_bytes(pickle.dumps({**zoo, "extra": RunsCode(marker)}, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match=r"the Python object posix\.mkdir"):
        SFMCheckpointer(Tiny()).load(str(path))
    assert not marker.exists()


def test_the_explicit_opt_in_loads_a_trusted_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "trusted.pkl"
    path.write_bytes(pickle.dumps({"model": {}, "__author__": "me", "x": RunsCode(marker)}))
    assert load_checkpoint(path, allow_unsafe=True)["__author__"] == "me"
    assert marker.is_dir()
    marker.rmdir()
    monkeypatch.setenv(ALLOW_UNSAFE_ENV, "1")
    assert load_checkpoint(path)["__author__"] == "me"  # the environment opt-in
    assert marker.is_dir()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pkl_still_loads(protocol: int, tmp_path: Path) -> None:
    """detectron2's format: a pickled dict of numpy arrays (+ numpy scalars, OrderedDict)."""
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    model_dict = collections.OrderedDict(
        [("fc.weight", weight), ("fc.bias", np.full(4, 0.5, np.float64))]
    )
    zoo = {"model": model_dict, "__author__": "zoo", "scale": np.float32(2.0)}
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(zoo, protocol=protocol))
    model = Tiny()
    SFMCheckpointer(model).load(str(path))
    assert torch.equal(model.fc.weight, torch.from_numpy(weight))
    assert torch.equal(model.fc.bias, torch.full((4,), 0.5))


def test_caffe2_blobs_pkl_still_loads(tmp_path: Path) -> None:
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    blobs = {"fc.weight": weight, "fc.bias": np.zeros(4, np.float32), "fc_momentum": weight}
    path = tmp_path / "caffe2.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    checkpointer = SFMCheckpointer(Tiny())
    loaded = checkpointer._load_file(str(path))
    assert loaded["__author__"] == "Caffe2"
    assert sorted(loaded["model"]) == ["fc.bias", "fc.weight"]


def test_converted_backbone_pkl_loads_safely(tmp_path: Path) -> None:
    """The converter's own .pkl output (sfm_d2.checkpoint.save_converted) passes the safe path."""
    state = {"fc.weight": torch.randn(4, 3), "fc.bias": torch.randn(4)}
    save_converted(state, tmp_path / "backbone.pkl")
    model = Tiny()
    SFMCheckpointer(model).load(str(tmp_path / "backbone.pkl"))
    assert torch.equal(model.fc.weight, state["fc.weight"])


@pytest.mark.parametrize("damage", ["truncated", "empty", "text instead of a checkpoint"])
def test_damaged_weights_name_their_path(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"model": Tiny().state_dict()}, path)
    DAMAGE[damage](path)
    with pytest.raises(CorruptCheckpointError, match=f"{path}: not a readable checkpoint"):
        SFMCheckpointer(Tiny()).load(str(path))
