"""The README's quick start runs as written: an SFM backbone from a yaml in three lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).parents[1] / "README.md"
REPO = Path(__file__).parents[3]


def quickstart() -> str:
    text = README.read_text()
    match = re.search(r"<!-- quickstart:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its quick-start block"
    return match.group(1)


def test_quickstart_is_three_lines() -> None:
    assert len([line for line in quickstart().splitlines() if line.strip()]) == 3


def test_quickstart_builds_an_sfm_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    namespace: dict[str, object] = {}
    exec(compile(quickstart(), str(README), "exec"), namespace)
    backbone = namespace["model"]
    assert isinstance(backbone, torch.nn.Module)
    assert sorted(backbone.ars) == ["res3", "res4", "res5"]  # type: ignore[attr-defined]
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 64, 96))  # type: ignore[operator]
    assert out["res5"].shape == (1, 2048, 2, 3)
    assert out["res5_positions"].shape == (1, 2, 2, 3)
