"""Files a detectron2 user expects: checkpoint modes as the umask gives them (detectron2: plain
``open``) and the evaluation files of detectron2's ``SemSegEvaluator``, beside SFM's extras."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from torch import nn

from sfm_d2.engine.checkpointer import SFMCheckpointer


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_files_get_the_mode_the_umask_gives(umask: int, tmp_path: Path) -> None:
    """0666 less the umask (0644 under the usual 022), not mkstemp's 0600."""
    previous = os.umask(umask)
    try:
        SFMCheckpointer(nn.Linear(2, 2), save_dir=str(tmp_path)).save("model_0000000")
    finally:
        os.umask(previous)
    names = ["model_0000000.pth", "model_0000000.pth.sha256", "last_checkpoint"]
    assert sorted(os.listdir(tmp_path)) == sorted(names)  # no temporary file left
    for name in names:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
