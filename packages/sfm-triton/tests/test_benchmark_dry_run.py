"""The GPU benchmark script runs end to end on tiny CPU inputs, so it cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_kernels.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_covers_every_op_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_benchmark()
    payload = bench.main(["--dry-run", "--out", str(tmp_path)])
    printed = capsys.readouterr().out

    ops = {row["op"] for row in payload["rows"]}
    assert ops == {
        "resample fwd",
        "resample bwd",
        "saliency_grid fwd+bwd",
        "lprm_aggregate fwd+bwd",
        "nonuniform_upsample fwd+bwd",
        "nonuniform_upsample fwd",
        "ms_deform_attn fwd",
        "ms_deform_attn fwd+bwd",
        "ARS+MSAU training step",
    }
    metrics = {(row["op"], row["metric"]) for row in payload["rows"]}
    assert ("resample fwd", "bandwidth") in metrics
    assert ("lprm_aggregate fwd+bwd", "memory") in metrics
    assert ("ms_deform_attn fwd+bwd", "memory") in metrics
    # The kernels agree with the reference even though dry-run timings mean nothing.
    assert all(row["error_ok"] for row in payload["rows"]), payload["rows"]
    for op in ops:
        assert op in printed

    (written,) = tmp_path.glob("bench_kernels-dry-run-*.json")
    saved = json.loads(written.read_text())
    assert saved["rows"] == json.loads(json.dumps(payload["rows"]))
    assert {"device", "torch", "triton", "python", "sfm_triton"} <= set(saved["environment"])
    assert saved["shapes"]["batch"] == 2
    assert saved["date"]


@pytest.mark.no_runtime
def test_unknown_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark()
    with pytest.raises(SystemExit):
        bench.main(["--ops", "resample,warp"])
    assert "--ops: unknown ['warp']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--dtypes", "float64"])
    assert "--dtypes: unknown ['float64']" in capsys.readouterr().err
