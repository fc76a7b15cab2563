"""The fused Triton saliency grid against the reference, forward and backward."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from sfm_core import functional as reference
from sfm_triton.ops.saliency import saliency_grid


def reference_run(
    logits: torch.Tensor, grad_grid: torch.Tensor, **settings: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid and logits gradient of the reference in fp64 (gradcheck-grade), in the kernel's dtypes."""
    logits64 = logits.detach().double().requires_grad_()
    grid = reference.saliency_grid(logits64, **settings)  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(grid, logits64, grad_grid.double())
    return grid.float(), grad.to(logits.dtype)


def check_against_reference(
    logits: torch.Tensor,
    device: torch.device,
    assert_close: Callable[..., None],
    **settings: float,
) -> torch.Tensor:
    logits = logits.to(device).requires_grad_()
    grid = saliency_grid(logits, **settings)  # type: ignore[arg-type]
    grad_grid = torch.randn(grid.shape, device=device)
    (grad,) = torch.autograd.grad(grid, logits, grad_grid)
    expected_grid, expected_grad = reference_run(logits, grad_grid, **settings)
    assert grid.dtype == torch.float32
    assert grad.dtype == logits.dtype
    assert_close(grid, expected_grid, msg="grid")
    assert_close(grad, expected_grad, msg="d logits")
    return grid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("shape", "window"),
    [
        ((2, 1, 7, 9), 5),  # odd sizes, window wider than the map: reflections repeat
        ((1, 1, 13, 12), 3),  # interior pixels see a single reflected image
        ((1, 1, 1, 4), 2),  # a single row reflects onto itself
    ],
)
def test_matches_reference(
    shape: tuple[int, int, int, int],
    window: int,
    dtype: torch.dtype,
    device: torch.device,
    assert_close: Callable[..., None],
) -> None:
    logits = (2.0 * torch.randn(shape)).to(dtype)
    check_against_reference(logits, device, assert_close, window=window)


def test_map_smaller_than_window_and_other_settings(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    logits = 1.5 * torch.randn(1, 1, 3, 2)
    check_against_reference(logits, device, assert_close, window=4, fwhm=2.0, s_min=0.05)


def test_clamped_saliency(device: torch.device, assert_close: Callable[..., None]) -> None:
    """Wide logits push most of the map under s_min: those pixels get no gradient."""
    logits = 6.0 * torch.randn(1, 1, 9, 8)
    assert (torch.exp(logits - logits.max()) < 1e-3).float().mean() > 0.3
    check_against_reference(logits, device, assert_close)


def test_non_contiguous_logits(device: torch.device, assert_close: Callable[..., None]) -> None:
    wide = torch.randn(2, 3, 8, 11)
    logits = wide[:, 1:2, :, 1:10]
    assert not logits.is_contiguous()
    check_against_reference(logits, device, assert_close, window=3)


def test_constant_logits_give_the_identity(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    """Every pixel attains the max: its gradient is shared by all of them, as amax does."""
    grid = check_against_reference(torch.full((1, 1, 6, 7), 0.75), device, assert_close)
    identity = reference.identity_positions(1, 6, 7, device=device).permute(0, 2, 3, 1) * 2 - 1
    assert_close(grid, identity)


def test_extreme_logits_stay_finite(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    logits = 1e4 * torch.randn(1, 1, 5, 6)
    grid = check_against_reference(logits, device, assert_close, window=2)
    assert torch.isfinite(grid).all()


@pytest.mark.no_runtime
def test_refuses_float64() -> None:
    with pytest.raises(TypeError, match=r"logits must have dtype .*got torch.float64"):
        saliency_grid(torch.randn(1, 1, 4, 4, dtype=torch.float64))


@pytest.mark.no_runtime
def test_refuses_bad_arguments() -> None:
    logits = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"logits must have 1 channel"):
        saliency_grid(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"window must be a positive int"):
        saliency_grid(logits, window=0)
    with pytest.raises(ValueError, match=r"s_min must be in \[1e-30, 1\]"):
        saliency_grid(logits, s_min=2.0)
