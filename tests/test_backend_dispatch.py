"""sfm-core's public ops dispatch to the triton plug-in exactly when asked (packages/sfm-core/README.md, backends).

Runs where the kernels can: on CUDA, or on CPU under ``TRITON_INTERPRET=1`` (the tests-triton
nox session).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from sfm_core import functional, ops
from sfm_core.backends import implementation
from sfm_core.cpu import BACKEND as CPU_BACKEND
from sfm_triton.backend import BACKEND
from sfm_triton.testing import assert_close

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()),
    reason="needs a CUDA device or TRITON_INTERPRET=1 (set before import)",
)
DEVICE = torch.device("cpu" if INTERPRET else "cuda")


def op_inputs() -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """Small awkward inputs for every public op: positional and keyword arguments."""
    generator = torch.Generator().manual_seed(7)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(DEVICE)

    positions = functional.identity_positions(1, 4, 5, device=DEVICE)
    positions = (positions + 0.02 * rand(1, 2, 4, 5)).clamp(0.01, 0.99)
    return {
        "saliency_grid": ((2.0 * rand(1, 1, 5, 7),), {"window": 3}),
        "resample": (
            (rand(1, 3, 5, 7), torch.rand(1, 4, 6, 2, generator=generator).to(DEVICE) * 2 - 1),
            {},
        ),
        "nonuniform_upsample": ((rand(1, 3, 4, 5), positions, (7, 9)), {}),
        "lprm_aggregate": ((rand(1, 3, 5, 6), rand(1, 9, 5, 6), 2), {}),
        "ms_deform_attn": (
            (
                rand(1, 7, 2, 3),
                torch.tensor([[2, 3], [1, 1]]),
                torch.rand(1, 4, 2, 2, 2, 2, generator=generator).to(DEVICE) * 1.4 - 0.2,
                torch.rand(1, 4, 2, 2, 2, generator=generator).to(DEVICE),
            ),
            {},
        ),
    }


def triton_ops() -> list[str]:
    return sorted(BACKEND.ops)


@pytest.mark.parametrize("name", triton_ops())
def test_forced_triton_matches_the_reference(name: str) -> None:
    args, kwargs = op_inputs()[name]
    public: Callable[..., torch.Tensor] = getattr(ops, name)
    got = public(*args, **kwargs, backend="triton")
    expected = public(*args, **kwargs, backend="reference")
    assert_close(got, expected)


@pytest.mark.parametrize("name", triton_ops())
def test_environment_variable_selects_the_backend(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = getattr(functional, name)
    monkeypatch.setenv("SFM_BACKEND", "triton")
    assert implementation(name, DEVICE, None, reference) is BACKEND.ops[name]
    monkeypatch.setenv("SFM_BACKEND", "reference")
    assert implementation(name, DEVICE, None, reference) is reference
    # An explicit argument wins over the environment.
    assert implementation(name, DEVICE, "triton", reference) is BACKEND.ops[name]


@pytest.mark.parametrize("name", triton_ops())
def test_auto_picks_triton_for_cuda_only(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFM_BACKEND", raising=False)
    reference = getattr(functional, name)
    # CPU tensors: sfm-core's built-in cpu backend where auto picks its op, else the reference.
    on_cpu = CPU_BACKEND.ops[name] if CPU_BACKEND.picks(name) else reference
    assert implementation(name, torch.device("cpu"), None, reference) is on_cpu
    if torch.cuda.is_available():
        assert implementation(name, torch.device("cuda"), None, reference) is BACKEND.ops[name]


def test_unknown_backend_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    x, grid = op_inputs()["resample"][0]
    with pytest.raises(
        ValueError,
        match=r"backend must be one of \['auto', 'cpu', 'reference', 'triton'\], got 'tritn'",
    ):
        ops.resample(x, grid, backend="tritn")
    monkeypatch.setenv("SFM_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"SFM_BACKEND must be one of .*got 'cuda'"):
        ops.resample(x, grid)


class DispatchedARS(torch.nn.Module):
    """The public ops, forced to triton: what sfm_core.nn modules run on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = ops.saliency_grid(x[:, :1], window=2, backend="triton")
        return ops.resample(x, grid, backend="triton")


def test_compile_fullgraph_through_the_dispatcher() -> None:
    """Dispatch resolves while dynamo traces, so the public ops compile without graph breaks."""
    x = torch.randn(1, 3, 5, 6, device=DEVICE)
    compiled = torch.compile(DispatchedARS(), fullgraph=True, backend="aot_eager")
    assert_close(compiled(x), DispatchedARS()(x))
