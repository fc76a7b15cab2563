"""The tolerance table every kernel-vs-reference comparison uses (tests, GPU tests, benchmarks).

One entry per dtype of the compared tensors, never loosened per environment. The kernels compute
in fp32 like the reference, so fp32 differences come only from summation order; half-precision
outputs may differ by the rounding of their last bit (and the interpreter truncates fp32 -> bf16).
Also the warped lattices that non-uniform upsampling is tested and benchmarked on.
"""

from __future__ import annotations

import torch

from sfm_core.functional import compose_positions, identity_positions, saliency_grid

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


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, *, msg: str = "") -> None:
    """:func:`assert_close` after dividing both by ``expected``'s largest magnitude.

    For results that sum many terms (a gradient reduced over hundreds of channels): their rounding
    error scales with the terms, not with an entry that happens to cancel to nearly zero.
    """
    scale = expected.detach().abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    assert_close(actual / scale.to(actual.dtype), expected / scale, msg=msg)


def warped_positions(
    batch: int,
    height: int,
    width: int,
    *,
    strength: float = 3.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """float32 positions ``[B, 2, h, w]`` of a lattice after one ARS driven by smooth random logits.

    The realistic case: ``saliency_grid`` of bilinearly upsampled noise, composed with the identity
    (computed in float64 by the reference, on the CPU, then moved to ``device``).
    """
    coarse = torch.randn(batch, 1, max(2, height // 4), max(2, width // 4), dtype=torch.float64)
    logits = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    grid = saliency_grid(logits * strength)
    identity = identity_positions(batch, height, width, dtype=torch.float64)
    return compose_positions(identity, grid).float().to(device)


def jittered_positions(
    batch: int,
    height: int,
    width: int,
    *,
    jitter: float = 0.45,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """float32 positions: lattice centres moved by up to ``jitter`` cells, independently per point.

    ``jitter`` past 0.5 lets neighbouring points cross, so the lattice folds (overlapping triangles,
    holes); ``jitter`` near 0 keeps it nearly uniform.
    """
    identity = identity_positions(batch, height, width, dtype=torch.float64)
    cell = torch.tensor([1 / width, 1 / height], dtype=torch.float64).view(1, 2, 1, 1)
    noise = (torch.rand(batch, 2, height, width, dtype=torch.float64) * 2 - 1) * jitter * cell
    return (identity + noise).clamp(1e-3, 1 - 1e-3).float().to(device)
