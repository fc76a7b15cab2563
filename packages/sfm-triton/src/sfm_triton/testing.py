"""The tolerance table every kernel-vs-reference comparison uses (tests, GPU tests, benchmarks).

One entry per dtype of the compared tensors, never loosened per environment. The kernels compute
in fp32 like the reference, so fp32 differences come only from summation order; half-precision
outputs may differ by the rounding of their last bit (and the interpreter truncates fp32 -> bf16).
"""

from __future__ import annotations

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-7, "atol": 1e-9},
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """``rtol``/``atol`` for comparing tensors of ``dtype``."""
    if dtype not in TOLERANCES:
        raise KeyError(f"no tolerance for {dtype}; known: {sorted(map(str, TOLERANCES))}")
    return TOLERANCES[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, msg: str = "") -> None:
    """``torch.testing.assert_close`` with the table's tolerance for ``expected.dtype``."""
    torch.testing.assert_close(
        actual, expected, **tolerance(expected.dtype), msg=(lambda default: f"{msg}\n{default}")
    )
