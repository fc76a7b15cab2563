"""Shared fixtures for sfm-core's tests: seeded randomness and realistic warped lattices."""

from __future__ import annotations

import pytest
import torch

from sfm_core.functional import compose_positions, identity_positions, saliency_grid


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def warped_positions(
    batch: int,
    height: int,
    width: int,
    *,
    strength: float = 3.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Positions of a lattice after one ARS driven by smooth random logits (a realistic warp)."""
    coarse = torch.randn(batch, 1, max(2, height // 4), max(2, width // 4), dtype=dtype)
    logits = (
        torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear") * strength
    )
    grid = saliency_grid(logits)
    return compose_positions(identity_positions(batch, height, width, dtype=dtype), grid)
