"""saliency_grid: the properties METHOD.md §1 pins down."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfm_core.functional import saliency_grid
from sfm_core.functional.saliency import correlate


def identity_grid(batch: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    theta = torch.eye(2, 3, dtype=dtype).expand(batch, 2, 3)
    return F.affine_grid(theta, [batch, 1, height, width], align_corners=False)


@pytest.mark.parametrize(("height", "width"), [(13, 17), (1, 9), (4, 3), (32, 32)])
def test_constant_logits_give_the_identity(height: int, width: int) -> None:
    logits = torch.full((2, 1, height, width), 0.7, dtype=torch.float64)
    grid = saliency_grid(logits)
    torch.testing.assert_close(grid, identity_grid(2, height, width, torch.float64))


def test_output_shape_and_dtype() -> None:
    for dtype, expected in [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        grid = saliency_grid(torch.randn(3, 1, 7, 10).to(dtype))
        assert grid.shape == (3, 7, 10, 2)
        assert grid.dtype == expected


@pytest.mark.parametrize("scale", [1.0, 5.0, 50.0])
def test_grid_never_folds(scale: float) -> None:
    logits = torch.randn(2, 1, 23, 19, dtype=torch.float64) * scale
    grid = saliency_grid(logits)
    assert (grid[..., 0].diff(dim=2) >= -1e-12).all(), "x must not decrease along a row"
    assert (grid[..., 1].diff(dim=1) >= -1e-12).all(), "y must not decrease along a column"


@pytest.mark.parametrize("window", [1, 3, 5])
def test_displacement_is_at_most_the_window(window: int) -> None:
    height, width = 21, 26
    logits = torch.randn(2, 1, height, width, dtype=torch.float64) * 20
    grid = saliency_grid(logits, window=window)
    cols = ((grid[..., 0] + 1) * width - 1) / 2
    rows = ((grid[..., 1] + 1) * height - 1) / 2
    assert (cols - torch.arange(width, dtype=torch.float64)).abs().max() <= window + 1e-9
    assert (
        rows - torch.arange(height, dtype=torch.float64).view(-1, 1)
    ).abs().max() <= window + 1e-9


def test_border_is_pinned_and_inside_the_outer_pixel_centres() -> None:
    height, width = 11, 14
    grid = saliency_grid(torch.randn(2, 1, height, width) * 10)
    ident = identity_grid(2, height, width, torch.float32)
    torch.testing.assert_close(grid[:, :, [0, -1], 0], ident[:, :, [0, -1], 0])
    torch.testing.assert_close(grid[:, [0, -1], :, 1], ident[:, [0, -1], :, 1])
    assert grid[..., 0].abs().max() <= 1 - 1 / width + 1e-6
    assert grid[..., 1].abs().max() <= 1 - 1 / height + 1e-6


def test_salient_region_attracts_samples() -> None:
    logits = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    logits[..., 15, 15] = 6.0
    grid = saliency_grid(logits)
    # Pixels left of the peak move right (towards it), pixels right of it move left.
    ident = identity_grid(1, 31, 31, torch.float64)
    shift = grid[0, 15, :, 0] - ident[0, 15, :, 0]
    assert (shift[10:15] > 0).all()
    assert (shift[16:21] < 0).all()


@pytest.mark.parametrize("magnitude", [1e2, 1e4])
def test_extreme_logits_stay_finite(magnitude: float) -> None:
    logits = torch.randn(2, 1, 16, 16) * magnitude
    assert torch.isfinite(saliency_grid(logits)).all()
    assert torch.isfinite(saliency_grid(logits.half().clamp(-6e4, 6e4))).all()
    assert torch.isfinite(saliency_grid(logits.bfloat16())).all()


def test_half_inputs_match_float32_on_the_same_values() -> None:
    logits = torch.randn(2, 1, 12, 15).half()
    torch.testing.assert_close(saliency_grid(logits), saliency_grid(logits.float()))
    bf = logits.float().bfloat16()
    torch.testing.assert_close(saliency_grid(bf), saliency_grid(bf.float()))


def test_gradcheck() -> None:
    logits = torch.randn(2, 1, 7, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: saliency_grid(a, window=2, fwhm=2.0), (logits,))


def test_gradient_reaches_logits_through_the_grid() -> None:
    logits = torch.randn(1, 1, 9, 9, requires_grad=True)
    saliency_grid(logits).sum().backward()
    assert logits.grad is not None
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logits": torch.zeros(1, 2, 4, 4)}, ValueError, "logits must have 1 channel"),
        ({"logits": torch.zeros(1, 4, 4)}, ValueError, "logits must be a 4-D tensor"),
        ({"logits": torch.zeros(1, 1, 4, 4, dtype=torch.int64)}, TypeError, "floating dtype"),
        ({"logits": [[0.0]]}, TypeError, "logits must be a torch.Tensor"),
        ({"logits": torch.zeros(1, 1, 4, 4), "window": 0}, ValueError, "window must be"),
        ({"logits": torch.zeros(1, 1, 4, 4), "window": 2.5}, ValueError, "window must be"),
        ({"logits": torch.zeros(1, 1, 4, 4), "fwhm": -1.0}, ValueError, "fwhm must be"),
        ({"logits": torch.zeros(1, 1, 4, 4), "s_min": 0.0}, ValueError, "s_min must be"),
        ({"logits": torch.zeros(1, 1, 4, 4), "s_min": 2.0}, ValueError, "s_min must be"),
    ],
)
def test_bad_input(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        saliency_grid(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_logit_makes_that_image_all_nan_and_leaves_the_others(bad: float) -> None:
    logits = torch.randn(3, 1, 12, 9) * 2
    clean = saliency_grid(logits)
    broken = logits.clone()
    broken[1, 0, 4, 6] = bad
    grid = saliency_grid(broken)
    assert grid[1].isnan().all()  # pinned border included: nothing of that image is trusted
    assert torch.equal(grid[[0, 2]], clean[[0, 2]])


def test_correlate_has_the_gradients_of_conv2d() -> None:
    """The separable passes' own backward (a forward convolution) against conv2d's autograd."""
    x = torch.randn(3, 1, 9, 14, dtype=torch.float64, requires_grad=True)
    taps = torch.randn(1, 1, 1, 5, dtype=torch.float64)
    out = correlate(x, taps)
    torch.testing.assert_close(out, F.conv2d(x, taps), rtol=0, atol=0)
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (expected,) = torch.autograd.grad((F.conv2d(x, taps) * weights).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    small = torch.randn(1, 1, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: correlate(t, taps.transpose(-1, -2)), (small,))
