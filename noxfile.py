"""Every environment of the repo: `nox` runs the default sessions (the README's test command).

Environments are built with uv from `constraints.txt` (uv ignores this machine's pip.conf, which
would pick a CPU-only torch that PyPI's torchvision cannot load; DESIGN.md section 3).
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = str(ROOT / "constraints.txt")
CORE = "./packages/sfm-core"
TRITON = "./packages/sfm-triton"
D2 = "./packages/sfm-d2"
PYTHON = "3.11"

nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "tests-core"]


def install(session: nox.Session, *requirements: str) -> None:
    """Install local packages and their requirements in one pinned resolver call."""
    session.install("-c", CONSTRAINTS, *requirements)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repo."""
    install(session, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on sfm-core."""
    install(session, "mypy", f"{CORE}[plot]")
    session.run("mypy", "packages/sfm-core/src")


@nox.session(name="tests-core", python=PYTHON)
def tests_core(session: nox.Session) -> None:
    """sfm-core installed alone with its test extras: proves it needs nothing else."""
    install(session, f"{CORE}[test]")
    session.run("pytest", "packages/sfm-core/tests", *session.posargs)
