"""Composite-grid bookkeeping of METHOD.md §2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfm_core.functional import (
    compose_positions,
    identity_positions,
    resize_positions,
    saliency_grid,
)


def test_identity_positions_are_pixel_centres() -> None:
    pos = identity_positions(2, 3, 4, dtype=torch.float64)
    assert pos.shape == (2, 2, 3, 4)
    torch.testing.assert_close(
        pos[0, 0, 1], torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64)
    )
    torch.testing.assert_close(
        pos[1, 1, :, 2], torch.tensor([1 / 6, 0.5, 5 / 6], dtype=torch.float64)
    )


@pytest.mark.parametrize(("size", "new"), [((16, 20), (8, 10)), ((7, 9), (4, 5)), ((8, 8), (8, 8))])
def test_resizing_identity_stays_identity(size: tuple[int, int], new: tuple[int, int]) -> None:
    pos = identity_positions(1, *size, dtype=torch.float64)
    torch.testing.assert_close(
        resize_positions(pos, new), identity_positions(1, *new, dtype=torch.float64)
    )


def test_composing_with_the_identity_grid_changes_nothing() -> None:
    pos = torch.rand(2, 2, 6, 7, dtype=torch.float64)
    grid = saliency_grid(torch.zeros(2, 1, 6, 7, dtype=torch.float64))
    torch.testing.assert_close(compose_positions(pos, grid), pos)


def test_composition_maps_to_the_sampled_image_position() -> None:
    height, width = 12, 15
    grid = saliency_grid(torch.randn(1, 1, height, width, dtype=torch.float64) * 3)
    pos = compose_positions(identity_positions(1, height, width, dtype=torch.float64), grid)
    # Sampling the identity map at g returns g itself in (0, 1) coordinates.
    torch.testing.assert_close(pos.permute(0, 2, 3, 1), (grid + 1) / 2)


def test_composition_resizes_a_coarser_map_first() -> None:
    grid = saliency_grid(torch.randn(2, 1, 10, 14) * 2)
    coarse = torch.rand(2, 2, 5, 7)
    composed = compose_positions(coarse, grid)
    assert composed.shape == (2, 2, 10, 14)
    resized = F.interpolate(coarse, size=(10, 14), mode="bilinear", align_corners=False)
    expected = F.grid_sample(resized, grid, "bilinear", "border", align_corners=False)
    torch.testing.assert_close(composed, expected)


def test_positions_carry_no_gradient() -> None:
    logits = torch.randn(1, 1, 6, 6, requires_grad=True)
    grid = saliency_grid(logits)
    composed = compose_positions(identity_positions(1, 6, 6), grid)
    assert not composed.requires_grad
    assert not resize_positions(composed, (3, 3)).requires_grad


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: identity_positions(-1, 3, 3), ValueError, "batch must be an int in"),
        (
            lambda: identity_positions(1, 3, 3, dtype=torch.int32),
            TypeError,
            "dtype must be a floating",
        ),
        (
            lambda: resize_positions(torch.zeros(1, 3, 4, 4), (2, 2)),
            ValueError,
            "positions must have 2 channels",
        ),
        (lambda: resize_positions(torch.zeros(1, 2, 4, 4), (2,)), TypeError, "size must be a"),
        (
            lambda: resize_positions(torch.zeros(1, 2, 4, 4), (0, 2)),
            ValueError,
            "size must be positive",
        ),
        (
            lambda: compose_positions(torch.zeros(2, 2, 4, 4), torch.zeros(1, 4, 4, 2)),
            ValueError,
            "batch sizes must agree",
        ),
    ],
)
def test_bad_input(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
