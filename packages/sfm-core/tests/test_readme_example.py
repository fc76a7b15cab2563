"""The usage examples in the READMEs print exactly what the READMEs say they print.

Every ```python block of the root README and of sfm-core's README runs as written, in a fresh
namespace; the lines it prints must equal, in order and character for character, the text after
each ``# prints:`` comment in that block (a block that prints without saying what fails too).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
READMES = [ROOT / "README.md", ROOT / "packages" / "sfm-core" / "README.md"]
PRINTS = re.compile(r"# prints: (.*?)\s*$", flags=re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def examples() -> list[tuple[str, str]]:
    """(id, code) of every python block, ids as ``README:index``."""
    found = []
    for readme in READMES:
        for index, block in enumerate(python_blocks(readme)):
            found.append((f"{readme.relative_to(ROOT)}:{index}", block))
    return found


def run_printing(code: str, name: str) -> list[str]:
    """The lines ``code`` prints to stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec"), {"__name__": "readme_example"})
    return out.getvalue().splitlines()


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_readme_shows_a_printed_example(readme: Path) -> None:
    assert any(PRINTS.search(block) for block in python_blocks(readme))


@pytest.mark.parametrize(("name", "code"), examples(), ids=[name for name, _ in examples()])
def test_example_prints_exactly_what_the_readme_shows(name: str, code: str) -> None:
    assert run_printing(code, name) == PRINTS.findall(code)


def test_the_comparison_catches_a_rounded_claim() -> None:
    """A README saying 0.2 where the code prints 0.211 must fail (the bug this test replaced)."""
    code = "print(round(0.2113, 3))  # prints: 0.2\n"
    assert run_printing(code, "claim") != PRINTS.findall(code)
    assert run_printing(code.replace("0.2\n", "0.211\n"), "claim") == ["0.211"]
