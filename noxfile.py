"""Every environment of the repo: `nox` runs the default sessions (the README's test command).

Environments are built with uv from `constraints.txt` (uv ignores this machine's pip.conf, which
would pick a CPU-only torch that PyPI's torchvision cannot load; see the Quickstart in README.md).
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
nox.options.sessions = [
    "lint",
    "typecheck",
    "tests-core",
    "tests-triton",
    "tests-d2",
    "tests-d2-main",
    "tests-newest",
]


def fresh_compile_cache(session: nox.Session) -> None:
    """Give torch.compile a cache of this run's own: inductor's default /tmp cache outlives
    clones and can hand back a graph compiled against an older schema of our custom ops."""
    session.env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(session.create_tmp()) / "inductor")
    session.env["TRITON_CACHE_DIR"] = str(Path(session.create_tmp()) / "triton")


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
    fresh_compile_cache(session)
    install(session, f"{CORE}[test]")
    session.run("pytest", "packages/sfm-core/tests", *session.posargs)


# Root tests owned by the triton backend: dispatch contract and reference-vs-triton training parity.
TRITON_ROOT_TESTS = ["tests/test_backend_dispatch.py", "tests/test_training_parity.py"]


@nox.session(name="tests-triton", python=PYTHON)
def tests_triton(session: nox.Session) -> None:
    """Every Triton kernel on CPU under Triton's interpreter (set before anything imports it)."""
    fresh_compile_cache(session)
    session.env["TRITON_INTERPRET"] = "1"
    session.env["SFM_TRITON_REQUIRE_RUNTIME"] = "1"  # a missing runtime fails instead of skipping
    install(session, f"{CORE}[test]", f"{TRITON}[test]", "fvcore")
    # GPU-marked tests need CUDA: deselected here (they run in the `gpu` session), so that any
    # skip this session reports is a real one.
    session.run(
        "pytest", "-m", "not gpu", "packages/sfm-triton/tests", *TRITON_ROOT_TESTS, *session.posargs
    )


DETECTRON2_WHEEL_SCRIPT = "tools/build_detectron2_wheel.sh"
DETECTRON2_MAIN_WHEEL_SCRIPT = "tools/build_detectron2_main_wheel.sh"


def built_wheel(session: nox.Session, script: str, *build_requirements: str) -> str:
    """Path of the wheel ``script`` builds (or finds cached) for this session's interpreter.

    The build tools go into the session's env first: detectron2's setup.py imports torch.
    """
    install(session, "torch", *build_requirements)
    python = str(Path(session.bin) / "python")
    output = session.run("bash", script, env={"PYTHON": python}, silent=True, external=True)
    wheel = str(output).strip().splitlines()[-1]
    session.log(f"detectron2 wheel: {wheel}")
    return wheel


def detectron2_wheel(session: nox.Session) -> str:
    """The Python-only detectron2 0.6 wheel; its build needs the pinned setuptools and pip
    (tools/build_detectron2_wheel.sh says why)."""
    return built_wheel(session, DETECTRON2_WHEEL_SCRIPT, "setuptools", "pip")


def detectron2_main_wheel(session: nox.Session) -> str:
    """A detectron2 wheel compiled from its main branch (real CPU `_C`), cached outside the clone
    (tools/build_detectron2_main_wheel.sh says where and how it is keyed)."""
    return built_wheel(session, DETECTRON2_MAIN_WHEEL_SCRIPT, "setuptools", "pip", "ninja")


@nox.session(name="tests-d2", python=PYTHON)
def tests_d2(session: nox.Session) -> None:
    """sfm-d2 against a real detectron2 (never a mock): missing detectron2 fails, never skips.

    detectron2 is not on PyPI: the script builds the Python-only 0.6 wheel from the pinned sdist,
    cached under .cache/detectron2/ (keyed by the sdist's sha256 and the Python version). Its
    build runs detectron2's setup.py, which imports torch, so torch goes in first.
    """
    fresh_compile_cache(session)
    wheel = detectron2_wheel(session)
    install(session, CORE, TRITON, f"{D2}[test]", wheel)
    # tests/test_project_configs.py: every yaml under projects/ loads and builds (needs detectron2).
    # tests/test_gpu_check.py: the GPU check's dry run (sfm-triton under the interpreter + d2).
    session.run(
        "pytest",
        "packages/sfm-d2/tests",
        "tests/test_project_configs.py",
        "tests/test_gpu_check.py",
        *session.posargs,
    )


@nox.session(name="tests-d2-main", python=PYTHON)
def tests_d2_main(session: nox.Session) -> None:
    """tests-d2's suite against detectron2 built from its main branch, as its install docs say.

    Same pins as tests-d2; only detectron2 differs (commit 02b5c4e with the C++ extension). The
    first run compiles it (minutes); later runs, from any clone, reuse the cached wheel.
    """
    fresh_compile_cache(session)
    wheel = detectron2_main_wheel(session)
    install(session, CORE, f"{D2}[test]", wheel)
    session.run(
        "pytest", "packages/sfm-d2/tests", "tests/test_project_configs.py", *session.posargs
    )


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The README's main command: baseline vs SFM Mask2Former on the built-in fine-detail dataset.

    Installs as tests-d2 (plus matplotlib for the figures), trains both models on the CPU and
    writes ``report/`` (another folder: ``nox -s demo -- --output DIR``; every option of
    ``projects/SFM-Mask2Former/tools/demo.py`` goes after ``--``). Not a default session.
    """
    wheel = detectron2_wheel(session)
    install(session, f"{CORE}[plot,cpu]", D2, wheel)  # [cpu]: numba kernels of the CPU fast path
    session.run("python", "projects/SFM-Mask2Former/tools/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def study(session: nox.Session) -> None:
    """The paired study (README): baseline checkpoints continued as baseline, SFM, ablations and a
    BlurPool-style low-pass; hierarchical-bootstrap intervals. Not a default session.

    About 45 minutes on 2 quiet CPU cores (estimated); ``nox -s study -- --quick`` is a smoke run
    of a few minutes. Writes
    ``study/`` (``--output DIR``); every option of ``projects/SFM-Mask2Former/tools/study.py``
    goes after ``--``. Finished runs are kept, so the same command resumes.
    """
    wheel = detectron2_wheel(session)
    install(session, f"{CORE}[plot]", D2, wheel)
    session.run("python", "projects/SFM-Mask2Former/tools/study.py", *session.posargs)


# What users get from an unpinned install today. Bounded: sfm-core's tests, the Triton kernels'
# backend contract and one kernel family, and the sfm-d2 tests that exercise the compatibility
# layer, multi-process training and one Mask2Former training step.
NEWEST_TESTS = [
    "packages/sfm-core/tests",
    "packages/sfm-triton/tests/test_backend.py",
    "packages/sfm-triton/tests/test_resample.py",
    "packages/sfm-triton/tests/test_saliency.py",
    "packages/sfm-d2/tests/test_compat.py",
    "packages/sfm-d2/tests/test_config.py",
    "packages/sfm-d2/tests/test_launch.py",
    "packages/sfm-d2/tests/test_m2f_model.py",
]


@nox.session(name="tests-newest", python=PYTHON)
def tests_newest(session: nox.Session) -> None:
    """The newest releases of every dependency (no constraints file), as an unpinned user installs.

    Only the detectron2 wheel is built with the pinned build tools (its sdist cannot be built
    otherwise); everything is then upgraded to the newest releases, setuptools>=82 included, so
    detectron2 0.6 runs on sfm_d2.compat's stand-ins (np.int, np.float, PIL.Image.LINEAR,
    pkg_resources). detectron2's main branch, which users who build from source get, is tested
    by tests-d2-main; with setuptools>=82 it needs the pkg_resources stand-in too.
    """
    fresh_compile_cache(session)
    session.env["TRITON_INTERPRET"] = "1"
    session.env["SFM_TRITON_REQUIRE_RUNTIME"] = "1"
    wheel = detectron2_wheel(session)
    session.install("--upgrade", "torch", "torchvision", "triton", "setuptools", "numpy", "pillow")
    session.install("--upgrade", f"{CORE}[test]", f"{TRITON}[test]", f"{D2}[test]", "fvcore", wheel)
    session.run(
        "python",
        "-c",
        "import numpy, setuptools, torch, triton, torchvision; "
        "print('newest stack:', *(f'{m.__name__} {m.__version__}' for m in "
        "(torch, torchvision, triton, numpy, setuptools)))",
    )
    session.run("pytest", "-m", "not gpu", *NEWEST_TESTS, *session.posargs)


@nox.session(name="gpu-wheels", python=PYTHON)
def gpu_wheels(session: nox.Session) -> None:
    """Fill .whl/ with the wheels the offline GPU machine lacks (tools/gpu_wheels.sh says which).

    Not a default session. tools/gpu_check.sh installs them there; packages/sfm-triton/README.md
    ("GPU check") gives the device call that carries .whl.
    """
    wheel = detectron2_wheel(session)
    python = str(Path(session.bin) / "python")
    session.run("bash", "tools/gpu_wheels.sh", wheel, env={"PYTHON": python}, external=True)


@nox.session(python=False)
def gpu(session: nox.Session) -> None:
    """The kernel checks in a Python that has CUDA, torch and triton (not a default session).

    The GPU machine has no nox: there, ``bash tools/gpu_check.sh`` runs these and every other GPU
    check in one call (packages/sfm-triton/README.md, "GPU check").
    """
    session.run(
        "python", "-m", "pytest", "-m", "gpu", "packages/sfm-triton/tests", *session.posargs
    )
    session.run("python", "packages/sfm-triton/benchmarks/bench_kernels.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """CPU benchmark: the reference nonuniform_upsample against scipy's (not a default session).

    Prints one table and writes benchmarks/results/nonuniform_upsample_cpu.json; options go
    after ``--`` (e.g. ``nox -s bench -- --repeats 3``).
    """
    install(session, CORE, "scipy")
    session.run("python", "benchmarks/bench_nonuniform_upsample.py", *session.posargs)


@nox.session(name="bench-ars", python=PYTHON)
def bench_ars(session: nox.Session) -> None:
    """CPU benchmark: ARS's time and FLOP overhead in timm backbones (not a default session).

    Prints one table and writes benchmarks/results/ars_overhead_cpu.json; options go after
    ``--`` (e.g. ``nox -s bench-ars -- --repeats 9``).
    """
    install(session, f"{CORE}[cpu]", "timm")  # [cpu]: the fast path's numba kernels
    session.run("python", "benchmarks/bench_ars_overhead.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """1,000 CPU training iterations of the SFM quick model; resident memory must stay flat.

    Not a default session (minutes: RELIABILITY.md has the measured time). Fails when the RSS
    slope after warm-up exceeds 1 MiB per 100 iterations; options go after ``--``.
    """
    wheel = detectron2_wheel(session)
    install(session, CORE, D2, wheel)
    output = session.create_tmp()
    session.env["SFM_DATA_CACHE"] = str(Path(output) / "data")
    session.run("python", "tools/soak_training.py", "--output-dir", output, *session.posargs)
