"""resample is exactly grid_sample(bilinear, border, align_corners=False)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfm_core.functional import resample, saliency_grid


@pytest.mark.parametrize("shape", [(1, 3, 13, 17), (2, 5, 8, 8), (1, 1, 1, 6)])
def test_equals_grid_sample(shape: tuple[int, int, int, int]) -> None:
    x = torch.randn(shape)
    grid = torch.rand(shape[0], 9, 11, 2) * 2.4 - 1.2  # also outside [-1, 1]: border padding
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(resample(x, grid), expected, rtol=0, atol=0)


def test_identity_grid_reproduces_the_input() -> None:
    x = torch.randn(2, 4, 10, 7, dtype=torch.float64)
    grid = saliency_grid(torch.zeros(2, 1, 10, 7, dtype=torch.float64))
    torch.testing.assert_close(resample(x, grid), x)


def test_non_contiguous_input() -> None:
    x = torch.randn(2, 6, 9, 13).transpose(2, 3)  # [2, 6, 13, 9], non-contiguous
    grid = saliency_grid(torch.randn(2, 1, 13, 9))
    expected = F.grid_sample(x.contiguous(), grid, "bilinear", "border", align_corners=False)
    torch.testing.assert_close(resample(x, grid), expected)
    cl = torch.randn(1, 5, 7, 7).to(memory_format=torch.channels_last)
    grid = saliency_grid(torch.randn(1, 1, 7, 7))
    torch.testing.assert_close(
        resample(cl, grid), F.grid_sample(cl.contiguous(), grid, "bilinear", "border", False)
    )


def test_half_features_keep_their_dtype_and_use_the_precise_grid() -> None:
    x = torch.randn(1, 3, 8, 9).half()
    grid = saliency_grid(torch.randn(1, 1, 8, 9))
    out = resample(x, grid)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, resample(x.float(), grid).half())


def test_gradcheck() -> None:
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(2, 4, 7, 2, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    assert torch.autograd.gradcheck(resample, (x, grid))


@pytest.mark.parametrize(
    ("x", "grid", "error", "match"),
    [
        (torch.zeros(3, 4, 4), torch.zeros(1, 4, 4, 2), ValueError, "x must be a 4-D"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, 3), ValueError, "grid must end in 2"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(1, 4, 4, 2), ValueError, "batch sizes must agree"),
        (
            torch.zeros(1, 3, 4, 4),
            torch.zeros(1, 4, 4, 2).long(),
            TypeError,
            "grid must have a floating",
        ),
        (
            torch.zeros(1, 3, 4, 4).bool(),
            torch.zeros(1, 4, 4, 2),
            TypeError,
            "x must have a floating",
        ),
        (
            torch.zeros(1, 3, 4, 4),
            torch.zeros(1, 4, 4, 2, device="meta"),
            ValueError,
            "same device",
        ),
    ],
)
def test_bad_input(x: torch.Tensor, grid: torch.Tensor, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        resample(x, grid)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_grid_point_samples_nan_and_passes_no_gradient(bad: float) -> None:
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    grid = (torch.rand(2, 5, 4, 2) * 1.8 - 0.9).requires_grad_()
    broken = grid.detach().clone()
    broken[1, 2, 3, 0] = bad  # one coordinate of one point of the second image
    broken.requires_grad_()
    out = resample(x, broken)
    assert out[1, :, 2, 3].isnan().all()
    clean = F.grid_sample(x, grid, "bilinear", "border", align_corners=False)
    pixel = torch.zeros(2, 1, 5, 4, dtype=torch.bool)
    pixel[1, 0, 2, 3] = True
    assert torch.equal(out.masked_fill(pixel, 0), clean.masked_fill(pixel, 0))
    # Gradients: those of grid_sample with the broken point's output left out of the loss.
    weights = torch.randn_like(clean).masked_fill(pixel, 0)
    grad_x, grad_grid = torch.autograd.grad((out.nan_to_num() * weights).sum(), (x, broken))
    expected_x, expected_grid = torch.autograd.grad((clean * weights).sum(), (x, grid))
    torch.testing.assert_close(grad_x, expected_x)
    assert torch.equal(grad_grid[1, 2, 3], torch.zeros(2))
    torch.testing.assert_close(grad_grid, expected_grid.masked_fill(pixel[:, 0, ..., None], 0))
