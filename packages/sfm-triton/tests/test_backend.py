"""The ``triton`` backend as sfm-core sees it: entry point, op contract, device check, CPU errors."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sfm_core import functional
from sfm_core.backends import plugins
from sfm_triton import _runtime
from sfm_triton.backend import BACKEND

pytestmark = pytest.mark.no_runtime


def test_entry_point_names_this_backend() -> None:
    assert plugins()["triton"] is BACKEND


def test_ops_have_the_reference_signatures() -> None:
    assert set(BACKEND.ops) == {
        "lprm_aggregate",
        "ms_deform_attn",
        "nonuniform_upsample",
        "resample",
        "saliency_grid",
    }
    for name, op in BACKEND.ops.items():
        assert inspect.signature(op) == inspect.signature(getattr(functional, name)), name


def test_check_follows_the_runtime() -> None:
    assert BACKEND.check(torch.device("cpu")) == _runtime.device_reason(torch.device("cpu"))
    reason = BACKEND.check(torch.device("meta"))
    assert reason is not None
    assert "CUDA" in reason


def run_without_interpreter(code: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU tensor must fail the same way on a GPU machine
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cpu_tensors_without_the_interpreter_get_a_clear_error() -> None:
    """Not Triton's '0 active drivers': a message naming the argument and the way out."""
    result = run_without_interpreter(
        """
        import torch
        from sfm_core import ops
        from sfm_triton.ops.resample import resample
        from sfm_triton.ops.saliency import saliency_grid

        x, grid, logits = torch.randn(1, 2, 4, 4), torch.zeros(1, 3, 3, 2), torch.randn(1, 1, 4, 4)
        for call in (lambda: resample(x, grid), lambda: saliency_grid(logits)):
            try:
                call()
            except ValueError as error:
                print("direct:", error)
        try:
            ops.resample(x, grid, backend="triton")
        except RuntimeError as error:
            print("forced:", error)
        print("auto:", ops.resample(x, grid).shape)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("direct: x is on cpu: sfm_triton kernels need a CUDA device")
    assert lines[1].startswith("direct: logits is on cpu: sfm_triton kernels need a CUDA device")
    assert lines[2].startswith("forced: the 'triton' backend cannot run resample on cpu")
    assert all("TRITON_INTERPRET=1" in line for line in lines[:3])
    assert lines[3] == "auto: torch.Size([1, 2, 3, 3])"  # auto keeps CPU tensors on the reference
