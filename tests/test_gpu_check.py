"""The GPU check (tools/gpu_check.py) runs end to end here, so that its first GPU call works.

The dry run takes every step's code path on the CPU under the Triton interpreter with tiny
shapes; the wheel retagging that tools/gpu_wheels.sh relies on is checked on a wheel made here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from retag_pure_wheel import record_hash, retag  # noqa: E402


@pytest.mark.slow
def test_dry_run_takes_every_step_and_reports_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the driver sets it
    # install needs .whl/ (tools/gpu_wheels.sh, network); pytest-root is tests-triton's own run.
    # The reference backend only: SFM Mask2Former on the triton backend takes minutes of CPU
    # under the interpreter even at 64² (the full dry run, README "GPU check", runs it).
    command = [sys.executable, str(ROOT / "tools/gpu_check.py"), "--dry-run", "--out",
               str(tmp_path), "--skip", "install,pytest-root", "--models", "R50",
               "--dtypes", "float32", "--backends", "reference", "--budget", "1500"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {step["name"]: step["status"] for step in report["steps"]}
    assert status == {
        "install": "skipped",
        "pytest-triton-gpu": "ok",
        "pytest-root": "skipped",
        "bench-kernels": "ok",
        "bench-mask2former": "ok",
        "bench-kernels-compile": "ok",
    }
    results = {step["name"]: step.get("results", {}) for step in report["steps"]}
    # Without CUDA every gpu test is collected and skipped, none fails.
    assert results["pytest-triton-gpu"]["tests"] > 0
    assert results["pytest-triton-gpu"]["skipped"] == results["pytest-triton-gpu"]["tests"]
    assert results["bench-kernels"]["rows"] > 0
    assert results["bench-kernels"]["wrong"] == []  # dry-run timings miss targets; errors may not
    m2f = results["bench-mask2former"]
    assert m2f["rows"] == 2  # R50 fp32 reference: plain and sfm
    assert m2f["errors"] == []
    (summary,) = m2f["summary"]
    assert {"reference_sfm_overhead_train_ms", "reference_sfm_overhead_infer_ms"} <= set(summary)
    assert len(report["files"]) <= 8  # what the device tool brings back
    assert "===== bench-mask2former" in (tmp_path / "gpu_check.log").read_text()


def make_wheel(path: Path, files: dict[str, bytes]) -> None:
    """A minimal wheel as setup.py bdist_wheel writes one for an impure build."""
    dist_info = "demo-1.0.dist-info"
    files = {
        **files,
        f"{dist_info}/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"
        b"Tag: cp311-cp311-linux_x86_64\n\n",
    }
    record = [f"{name},{record_hash(data)},{len(data)}" for name, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)


def test_retag_makes_a_pure_wheel_with_a_valid_record(tmp_path: Path) -> None:
    source = tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl"
    make_wheel(source, {"demo/__init__.py": b"x = 1\n"})
    target = retag(source, tmp_path / "out")
    assert target.name == "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(target) as wheel:
        metadata = wheel.read("demo-1.0.dist-info/WHEEL").decode()
        record = wheel.read("demo-1.0.dist-info/RECORD").decode().splitlines()
        contents = {name: wheel.read(name) for name in wheel.namelist()}
    assert "Tag: py3-none-any" in metadata.splitlines()
    assert "Root-Is-Purelib: true" in metadata.splitlines()
    assert "cp311" not in metadata
    for line in record:
        name, digest, size = line.rsplit(",", 2)
        if name.endswith("RECORD"):
            continue
        assert digest == record_hash(contents[name])
        assert int(size) == len(contents[name])
    assert contents["demo/__init__.py"] == b"x = 1\n"


def test_retag_refuses_a_wheel_with_compiled_code(tmp_path: Path) -> None:
    source = tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl"
    make_wheel(source, {"demo/_ext.so": b"\x7fELF"})
    with pytest.raises(SystemExit, match=r"compiled files \['demo/_ext.so'\]: not pure"):
        retag(source, tmp_path / "out")
