"""The tolerance table every kernel-vs-reference comparison uses (tests, GPU tests, benchmarks).

One entry per dtype of the compared tensors, never loosened per environment. The kernels compute
in fp32 like the reference, so fp32 differences come only from summation order; half-precision
outputs may differ by the rounding of their last bit (and the interpreter truncates fp32 -> bf16).
Also the warped lattices that non-uniform upsampling is tested and benchmarked on, and the
inputs of a deformable-attention encoder layer.
"""

from __future__ import annotations

import math

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


def deformable_attention_inputs(
    batch: int,
    levels: list[tuple[int, int]],
    heads: int,
    channels: int,
    points: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(value, spatial_shapes, sampling_locations, attention_weights)`` of an encoder layer.

    As Mask2Former's pixel decoder at initialisation plus noise: every pixel of every level is a
    query (Q = S), sampling around its own pixel centre on a ring per head (point ``p`` at ``p + 1``
    pixels of each level, in the head's direction) jittered by half a pixel, so points fall
    between pixel centres and some outside the maps; softmax weights over levels x points.
    ``spatial_shapes`` stays on the CPU (no device sync to read it).
    """
    shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = torch.tensor([[w, h] for h, w in levels], dtype=torch.float32, device=device)
    centres = [
        torch.stack(
            torch.meshgrid(
                (torch.arange(w, device=device) + 0.5) / w,
                (torch.arange(h, device=device) + 0.5) / h,
                indexing="xy",
            ),
            dim=-1,
        ).reshape(-1, 2)
        for h, w in levels
    ]
    reference = torch.cat(centres)  # [S, 2] (x, y)
    angle = torch.arange(heads, device=device) * (2 * math.pi / heads)
    ring = torch.stack([angle.cos(), angle.sin()], dim=-1)  # [heads, 2]
    radius = torch.arange(1, points + 1, device=device, dtype=torch.float32)
    offsets = ring[:, None, None, :] * radius[None, None, :, None]  # [heads, 1, P, 2] pixels
    queries = reference.shape[0]
    noise = 0.5 * torch.randn(batch, queries, heads, len(levels), points, 2, device=device)
    locations = reference[None, :, None, None, None, :] + (offsets + noise) / sizes[:, None, :]
    weights = torch.randn(batch, queries, heads, len(levels) * points, device=device)
    weights = weights.softmax(-1).reshape(batch, queries, heads, len(levels), points)
    value = torch.randn(batch, queries, heads, channels, device=device)
    return value.to(dtype), shapes, locations.to(dtype), weights.to(dtype)
