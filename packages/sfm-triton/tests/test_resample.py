"""The Triton resample against the reference, forward and backward, on tiny awkward inputs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from sfm_core import functional as reference
from sfm_triton.ops.resample import resample

LAYOUTS = ["contiguous", "channels_last", "strided"]


def make_x(shape: tuple[int, ...], dtype: torch.dtype, layout: str) -> torch.Tensor:
    """Random features in the asked memory layout (``strided``: every other channel of a wider map)."""
    batch, channels, height, width = shape
    if layout == "strided":
        wide = torch.randn(batch, 2 * channels, height, width + 3).to(dtype)
        x = wide[:, ::2, :, 1 : width + 1]
        assert not x.is_contiguous()
        assert not x.is_contiguous(memory_format=torch.channels_last)
        return x
    x = torch.randn(shape).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def make_grid(batch: int, height: int, width: int, source: tuple[int, int]) -> torch.Tensor:
    """Random coordinates reaching past the border, plus exact pixel centres and clip limits."""
    grid = torch.rand(batch, height, width, 2) * 2.6 - 1.3
    src_h, src_w = source
    grid[0, 0, 0] = torch.tensor([-1 + 1 / src_w, -1 + 1 / src_h])  # first centre: clip limit
    grid[0, 0, -1] = torch.tensor([1 - 1 / src_w, 1 - 1 / src_h])  # last centre: clip limit
    if width > 2:
        grid[0, -1, 1] = torch.tensor([(2 * 1 + 1) / src_w - 1, 0.0])  # an interior centre
    return grid


def reference_run(
    x: torch.Tensor, grid: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output and gradients of the reference computed in fp32, returned in the inputs' dtypes.

    fp32 like the kernel, not fp64: at coordinates that land exactly on a pixel (tested on
    purpose) the bilinear derivative jumps, and an fp64 run can fall on the other side.
    """
    x32 = x.detach().float().requires_grad_()
    grid32 = grid.detach().float().requires_grad_()
    out = reference.resample(x32, grid32)
    grad_x, grad_grid = torch.autograd.grad(out, (x32, grid32), grad_out.float())
    return out.to(x.dtype), grad_x.to(x.dtype), grad_grid.to(grid.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("x_shape", "out_hw"),
    [
        ((1, 3, 5, 7), (4, 6)),
        ((2, 5, 7, 9), (7, 9)),
        ((1, 37, 3, 4), (5, 2)),
        ((2, 2, 1, 6), (3, 3)),
    ],
)
def test_matches_reference(
    x_shape: tuple[int, int, int, int],
    out_hw: tuple[int, int],
    layout: str,
    dtype: torch.dtype,
    device: torch.device,
    assert_close: Callable[..., None],
) -> None:
    x = make_x(x_shape, dtype, layout).to(device).requires_grad_()
    grid = make_grid(x_shape[0], *out_hw, x_shape[2:]).to(device).requires_grad_()
    out = resample(x, grid)
    grad_out = torch.randn(out.shape, device=device).to(dtype)
    grad_x, grad_grid = torch.autograd.grad(out, (x, grid), grad_out)
    expected, expected_grad_x, expected_grad_grid = reference_run(x, grid, grad_out)

    assert out.dtype == dtype
    assert grad_x.dtype == dtype
    assert grad_grid.dtype == torch.float32
    assert_close(out, expected, msg="output")
    assert_close(grad_x, expected_grad_x, msg="grad_x")
    assert_close(grad_grid, expected_grad_grid, msg="grad_grid")


def test_channels_last_stays_channels_last(device: torch.device) -> None:
    x = make_x((1, 6, 5, 7), torch.float32, "channels_last").to(device).requires_grad_()
    grid = make_grid(1, 4, 3, (5, 7)).to(device)
    out = resample(x, grid)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()
    (grad_x,) = torch.autograd.grad(out, x, torch.randn_like(out))
    assert grad_x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("wanted", ["x", "grid"])
def test_one_sided_gradients(
    wanted: str, device: torch.device, assert_close: Callable[..., None]
) -> None:
    """Only the requested gradient is computed, and it equals the two-sided one."""
    x = make_x((1, 4, 6, 5), torch.float32, "contiguous").to(device)
    grid = make_grid(1, 3, 4, (6, 5)).to(device)
    target = x if wanted == "x" else grid
    target.requires_grad_()
    out = resample(x, grid)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, target, grad_out)
    _, expected_grad_x, expected_grad_grid = reference_run(x, grid, grad_out)
    assert_close(grad, expected_grad_x if wanted == "x" else expected_grad_grid)


def test_half_grid_is_accepted(device: torch.device, assert_close: Callable[..., None]) -> None:
    """A grid in the features' half dtype is read in fp32 (so the reference runs in fp32 too)."""
    x = make_x((1, 3, 5, 6), torch.float16, "contiguous").to(device).requires_grad_()
    grid = make_grid(1, 4, 4, (5, 6)).to(device).half().requires_grad_()
    out = resample(x, grid)
    grad_out = torch.randn_like(out)
    grad_x, grad_grid = torch.autograd.grad(out, (x, grid), grad_out)
    expected, expected_grad_x, expected_grad_grid = reference_run(x, grid, grad_out)
    assert grad_grid.dtype == torch.float16
    assert_close(out, expected)
    assert_close(grad_x, expected_grad_x)
    assert_close(grad_grid, expected_grad_grid)


def test_identity_grid_returns_the_input(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    x = make_x((1, 5, 7, 6), torch.float32, "contiguous").to(device)
    identity = reference.identity_positions(1, 7, 6, device=device).permute(0, 2, 3, 1) * 2 - 1
    assert_close(resample(x, identity), x)


@pytest.mark.no_runtime
def test_refuses_float64() -> None:
    with pytest.raises(TypeError, match=r"x must have dtype .*got torch.float64"):
        resample(torch.randn(1, 2, 3, 3, dtype=torch.float64), torch.zeros(1, 2, 2, 2))


@pytest.mark.no_runtime
def test_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"grid must end in 2"):
        resample(torch.randn(1, 2, 3, 3), torch.rand(1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"batch sizes must agree"):
        resample(torch.randn(2, 2, 3, 3), torch.rand(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"x must be a 4-D tensor"):
        resample(torch.randn(2, 3, 3), torch.rand(1, 2, 2, 2))
