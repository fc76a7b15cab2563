"""Every config of the rasterize / gather / lprm kernels compiles for sm_90 without spills.

Runs ``compile_nonuniform_lprm_for_gpu.py`` in a fresh interpreter without ``TRITON_INTERPRET``,
so the kernels are JIT functions even inside the interpreter session; no GPU is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_nonuniform_lprm_for_gpu.py")


@pytest.mark.no_runtime
@pytest.mark.slow
def test_every_config_compiles_for_sm90_without_spills() -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    kernels = {report["kernel"] for report in reports}
    assert len(kernels) == 16, kernels
    spilling = [report for report in reports if report["spill_bytes"] > 0]
    assert not spilling, spilling
