#!/usr/bin/env python
"""Every GPU check of the repo in one run, each step guarded, within one time budget.

Steps, in order (correctness first); each is a subprocess with its own time limit, so one that
fails or hangs costs its own result only:

1. ``install``: the carried wheels (``.whl/``, tools/gpu_wheels.sh) with ``--no-index --no-deps``,
   then sfm-core, sfm-triton and sfm-d2 editable, without build isolation;
2. ``pytest-triton-gpu``: ``pytest -m gpu packages/sfm-triton/tests``;
3. ``pytest-root``: the root tests of the Triton backend (tests/test_backend_dispatch.py,
   tests/test_training_parity.py), which run on CUDA when it is there (root tests carry no
   ``gpu`` marker);
4. ``bench-kernels``: packages/sfm-triton/benchmarks/bench_kernels.py, every op, eager baselines;
5. ``bench-mask2former``: packages/sfm-d2/benchmarks/bench_mask2former_gpu.py;
6. ``bench-kernels-compile``: bench_kernels.py again for the ops whose targets name
   ``torch.compile`` baselines, with them (compiling is slow: last, in whatever time is left).

Writes to ``--out`` (the device tool's ``$OUT``): ``gpu_check.log`` (every step's output),
``gpu_check.json`` (per step: command, exit code, seconds, status, parsed results) and the files
the steps write (junit XML, the benchmarks' JSON): at most 8 files, the device tool's limit.

``--dry-run``: the same steps on this CPU under ``TRITON_INTERPRET=1`` with tiny shapes, using
the current interpreter's environment (a nox env) and the source tree first on ``PYTHONPATH``;
``install`` then only checks that the wheels install for CPython 3.12 (into a scratch folder).
Run through tools/gpu_check.sh; packages/sfm-triton/README.md ("GPU check") gives the device call.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["packages/sfm-core/src", "packages/sfm-triton/src", "packages/sfm-d2/src"]
WHEELS = ROOT / ".whl"
BENCH_KERNELS = "packages/sfm-triton/benchmarks/bench_kernels.py"
BENCH_M2F = "packages/sfm-d2/benchmarks/bench_mask2former_gpu.py"
ROOT_TESTS = ["tests/test_backend_dispatch.py", "tests/test_training_parity.py"]
COMPILE_OPS = "saliency_grid,lprm_aggregate,nonuniform_upsample,ms_deform_attn"
MAX_FILES = 8  # the device tool brings back at most 8 files from $OUT
PY312_TAGS = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
              "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:"]  # fmt: skip


@dataclass
class Step:
    """One guarded subprocess: ``cap`` seconds at most; ``reserve`` seconds kept for later steps."""

    name: str
    commands: list[list[str]]
    cap: float
    reserve: float = 0.0
    ok_codes: tuple[int, ...] = (0,)
    keep_going: bool = False  # run the next command after one fails
    result: dict[str, Any] = field(default_factory=dict)


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def steps(args: argparse.Namespace) -> list[Step]:
    out, py = str(args.out), sys.executable
    wheels = sorted(str(p) for p in WHEELS.glob("*.whl")) or [str(WHEELS / "MISSING.whl")]
    if args.dry_run:
        scratch = tempfile.mkdtemp(prefix="gpu_check_wheels_")
        install = [pip("install", "-q", "--no-index", "--no-deps", "--no-compile",
                       "--target", scratch, *PY312_TAGS, *wheels)]  # fmt: skip
        kernels = [py, BENCH_KERNELS, "--dry-run", "--out", out]
        m2f = [py, BENCH_M2F, "--dry-run", "--out", out, "--models", args.models,
               "--dtypes", args.dtypes, "--backends", args.backends]  # fmt: skip
        kernels_compile = [py, BENCH_KERNELS, "--dry-run", "--ops", "ms_deform_attn", "--out", out]
    else:
        install = [
            pip("install", "-q", "--no-index", "--no-deps", "--no-compile", *wheels),
            pip("install", "-q", "--no-deps", "--no-build-isolation",
                *(x for pkg in ("sfm-core", "sfm-triton", "sfm-d2") for x in ("-e", f"packages/{pkg}"))),
        ]  # fmt: skip
        kernels = [py, BENCH_KERNELS, "--no-compile", "--warmup", "5", "--reps", "20", "--out", out]
        m2f = [py, BENCH_M2F, "--out", out, "--models", args.models, "--dtypes", args.dtypes,
               "--backends", args.backends]  # fmt: skip
        kernels_compile = [py, BENCH_KERNELS, "--ops", COMPILE_OPS, "--warmup", "5", "--reps",
                           "20", "--out", out]  # fmt: skip
    pytest = [py, "-m", "pytest", "-v", "--durations=15", "-p", "no:cacheprovider"]
    return [
        # The packages' own install must run even when a carried wheel is missing.
        Step("install", install, cap=90, reserve=240, keep_going=True),
        Step("pytest-triton-gpu",
             [[*pytest, "-m", "gpu", f"--junitxml={out}/junit-triton-gpu.xml", "packages/sfm-triton/tests"]],
             cap=150, reserve=200),
        Step("pytest-root", [[*pytest, f"--junitxml={out}/junit-root.xml", *ROOT_TESTS]],
             cap=60, reserve=180),
        Step("bench-kernels", [kernels], cap=120, reserve=120),
        Step("bench-mask2former", [m2f], cap=240),
        Step("bench-kernels-compile", [kernels_compile], cap=600),
    ]  # fmt: skip


def child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
        env["SFM_TRITON_REQUIRE_RUNTIME"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            [*(str(ROOT / s) for s in SOURCES), *filter(None, [env.get("PYTHONPATH")])]
        )
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def run(command: list[str], timeout: float, env: dict[str, str], log: Any) -> tuple[int, bool]:
    """Run ``command`` in its own process group, its output to the log and to our stdout."""
    log.write(f"$ {' '.join(command)}   # limit {timeout:.0f} s\n")
    log.flush()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, text=True, errors="replace", bufsize=1,
    )  # fmt: skip

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        timed_out = True
        log.write(f"\n[killed after {timeout:.0f} s]\n")
    reader.join(10)
    return proc.returncode, timed_out


def junit_summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "failed": failed[:50]}


def newest_json(out: Path, prefix: str, since: float) -> dict[str, Any]:
    files = [Path(p) for p in glob.glob(str(out / f"{prefix}-*.json"))]
    files = [p for p in files if p.stat().st_mtime >= since - 1]
    if not files:
        return {}
    path = max(files, key=lambda p: p.stat().st_mtime)
    data = json.loads(path.read_text())
    rows = data.get("rows", [])
    summary: dict[str, Any] = {"file": path.name, "rows": len(rows)}
    if prefix == "bench_kernels":
        name = "{op} | {case} | {dtype} | {metric}"
        # missed: a target not met (meaningless in a dry run); wrong: beyond the error tolerance.
        summary["missed"] = [name.format(**r) for r in rows if r.get("passed") is False]
        summary["wrong"] = [name.format(**r) for r in rows if not r.get("error_ok", True)]
        summary["passed"] = sum(1 for r in rows if r.get("passed") is True)
    else:
        summary["errors"] = [f"{r['model']} {r['dtype']} {r['backend']} {r['variant']}: "
                             f"{r['error']}" for r in rows if "error" in r]  # fmt: skip
        summary["not_run"] = len(data.get("not_run", []))
        summary["summary"] = data.get("summary", [])
    return summary


def parse_results(step: Step, out: Path, began: float) -> dict[str, Any]:
    if step.name.startswith("pytest"):
        return junit_summary(
            out / ("junit-triton-gpu.xml" if "triton" in step.name else "junit-root.xml")
        )
    if step.name.startswith("bench-kernels"):
        return newest_json(out, "bench_kernels", began)
    if step.name == "bench-mask2former":
        return newest_json(out, "bench_mask2former_gpu", began)
    return {}  # fmt: skip


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        done = subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder ($OUT)")
    parser.add_argument("--budget", type=float, default=360, help="seconds for all steps")
    parser.add_argument("--dry-run", action="store_true", help="CPU, TRITON_INTERPRET=1, tiny")
    parser.add_argument("--skip", default="", help="comma-separated step names to leave out")
    parser.add_argument("--models", default="R50,Swin-T", help="Mask2Former backbones")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="Mask2Former dtypes")
    parser.add_argument("--backends", default="triton,reference", help="MODEL.SFM.BACKEND values")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    env = child_env(args)
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "budget_s": args.budget,
        "argv": sys.argv[1:] if argv is None else argv,
        "environment": environment(),
        "steps": [],
    }
    all_steps = steps(args)
    unknown = skip - {s.name for s in all_steps}
    if unknown:
        parser.error(f"--skip: unknown steps {sorted(unknown)}")
    with open(args.out / "gpu_check.log", "a", encoding="utf-8") as log:
        for step in all_steps:
            remaining = args.budget - (time.monotonic() - start)
            # The caps are sized for the GPU; a dry run on a loaded CPU gets the whole budget.
            timeout = remaining if args.dry_run else min(step.cap, remaining - step.reserve)
            entry: dict[str, Any] = {"name": step.name, "commands": step.commands}
            if step.name in skip:
                entry["status"] = "skipped"
            elif timeout < 20:
                entry["status"] = f"not run: {remaining:.0f} s of the budget left"
            else:
                log.write(f"\n===== {step.name} (limit {timeout:.0f} s) =====\n")
                print(f"\n===== {step.name} (limit {timeout:.0f} s) =====", flush=True)
                began, wall = time.time(), time.monotonic()
                codes = []
                for command in step.commands:
                    left = timeout - (time.monotonic() - wall)
                    code, timed_out = run(command, max(left, 1), env, log)
                    codes.append(code)
                    if timed_out or (code not in step.ok_codes and not step.keep_going):
                        break
                entry["exit_codes"] = codes
                entry["seconds"] = round(time.monotonic() - wall, 1)
                entry["status"] = (
                    "timeout" if timed_out else "ok" if all(c in step.ok_codes for c in codes) else "failed"
                )  # fmt: skip
                try:
                    entry["results"] = parse_results(step, args.out, began)
                except Exception as error:  # a report that cannot be read must not stop the run
                    entry["results"] = {"unreadable": f"{type(error).__name__}: {error}"}
            report["steps"].append(entry)
            print(f"===== {step.name}: {entry['status']} =====", flush=True)
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    report["seconds"] = round(time.monotonic() - start, 1)
    files = sorted(p.name for p in args.out.rglob("*") if p.is_file())
    report["files"] = files
    if len(files) > MAX_FILES:
        report["warning"] = f"{len(files)} files in --out; the device tool brings back {MAX_FILES}"
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n| step | status | seconds |\n|---|---|---|")
    for entry in report["steps"]:
        print(f"| {entry['name']} | {entry['status']} | {entry.get('seconds', '')} |")
    print(f"total {report['seconds']} s; wrote {args.out / 'gpu_check.json'}")
    return 0 if all(e["status"] in ("ok", "skipped") for e in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
