"""The usage examples in the READMEs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
READMES = [ROOT / "README.md", ROOT / "packages" / "sfm-core" / "README.md"]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(readme: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(readme)
    assert blocks, f"{readme} should show a usage example"
    for block in blocks:
        exec(compile(block, str(readme), "exec"), {})
    printed = capsys.readouterr().out
    for expected in re.findall(r"# prints: (.*)", "\n".join(blocks)):
        assert expected.strip() in printed
