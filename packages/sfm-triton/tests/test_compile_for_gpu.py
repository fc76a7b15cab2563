"""Every autotune config of every kernel compiles for sm_90 without spills.

Runs the compile scripts (``compile_for_gpu.py`` for resample/saliency,
``compile_nonuniform_lprm_for_gpu.py`` for rasterize/gather/lprm,
``compile_ms_deform_attn_for_gpu.py`` for ms_deform_attn) in a fresh interpreter without
``TRITON_INTERPRET``, so the kernels are JIT functions even inside the interpreter session; no GPU
is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.no_runtime
@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "kernel_count"),
    [
        ("compile_for_gpu.py", 7),
        ("compile_nonuniform_lprm_for_gpu.py", 18),
        ("compile_ms_deform_attn_for_gpu.py", 7),
    ],
)
def test_every_config_compiles_for_sm90_without_spills(script: str, kernel_count: int) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(HERE / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    kernels = {report["kernel"] for report in reports}
    assert len(kernels) == kernel_count, kernels
    spilling = [report for report in reports if report["spill_bytes"] > 0]
    assert not spilling, spilling
