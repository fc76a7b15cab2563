"""lprm_aggregate: the dilated 3x3 dynamic aggregation of METHOD.md §3.2."""

from __future__ import annotations

import pytest
import torch

from sfm_core.functional import lprm_aggregate


def naive_lprm(v: torch.Tensor, logits: torch.Tensor, dilation: int) -> torch.Tensor:
    """Pixel-by-pixel definition, for comparison."""
    height, width = v.shape[-2:]
    weights = torch.softmax(logits, dim=1)
    out = torch.zeros_like(v)
    for i in range(height):
        for j in range(width):
            for n in range(9):
                y = min(max(i + (n // 3 - 1) * dilation, 0), height - 1)
                x = min(max(j + (n % 3 - 1) * dilation, 0), width - 1)
                out[:, :, i, j] += weights[:, n, i, j, None] * v[:, :, y, x]
    return out


@pytest.mark.parametrize(
    ("height", "width", "dilation"), [(5, 7, 1), (6, 5, 2), (3, 4, 4), (9, 2, 16)]
)
def test_matches_the_pixelwise_definition(height: int, width: int, dilation: int) -> None:
    v = torch.randn(2, 3, height, width, dtype=torch.float64)
    logits = torch.randn(2, 9, height, width, dtype=torch.float64)
    torch.testing.assert_close(lprm_aggregate(v, logits, dilation), naive_lprm(v, logits, dilation))


def test_dominant_centre_tap_is_the_identity() -> None:
    v = torch.randn(1, 5, 11, 13)
    logits = torch.randn(1, 9, 11, 13)
    logits[:, 4] += 100.0
    torch.testing.assert_close(lprm_aggregate(v, logits, 3), v)


def test_same_weights_for_every_channel() -> None:
    v = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    logits = torch.randn(1, 9, 6, 6, dtype=torch.float64)
    single = lprm_aggregate(v, logits, 2)
    stacked = lprm_aggregate(torch.cat([v, 2 * v, -v], dim=1), logits, 2)
    torch.testing.assert_close(stacked, torch.cat([single, 2 * single, -single], dim=1))


def test_dtypes_and_non_contiguous() -> None:
    v = torch.randn(2, 4, 7, 9).transpose(2, 3)
    logits = torch.randn(2, 9, 9, 7)
    torch.testing.assert_close(
        lprm_aggregate(v, logits, 2), lprm_aggregate(v.contiguous(), logits, 2)
    )
    half = lprm_aggregate(v.half(), logits.half(), 1)
    assert half.dtype == torch.float16
    torch.testing.assert_close(
        half, lprm_aggregate(v.half().float(), logits.half().float(), 1).half()
    )


def test_gradcheck() -> None:
    v = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 9, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: lprm_aggregate(a, b, 2), (v, logits))


@pytest.mark.parametrize(
    ("v", "logits", "dilation", "error", "match"),
    [
        (torch.zeros(1, 2, 4, 4), torch.zeros(1, 8, 4, 4), 1, ValueError, "9 channels"),
        (torch.zeros(1, 2, 4, 4), torch.zeros(1, 9, 4, 5), 1, ValueError, "share H, W"),
        (torch.zeros(1, 2, 4, 4), torch.zeros(2, 9, 4, 4), 1, ValueError, "batch sizes"),
        (torch.zeros(1, 2, 4, 4), torch.zeros(1, 9, 4, 4), 0, ValueError, "dilation must be"),
        (torch.zeros(2, 4, 4), torch.zeros(1, 9, 4, 4), 1, ValueError, "v must be a 4-D"),
    ],
)
def test_bad_input(
    v: torch.Tensor, logits: torch.Tensor, dilation: int, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        lprm_aggregate(v, logits, dilation)
