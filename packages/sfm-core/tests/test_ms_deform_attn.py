"""ms_deform_attn: Deformable DETR's multi-scale deformable attention gather, in plain PyTorch."""

from __future__ import annotations

import math

import pytest
import torch

from sfm_core import ops
from sfm_core.functional import ms_deform_attn

Levels = list[tuple[int, int]]


def make_inputs(
    levels: Levels,
    *,
    batch: int = 2,
    queries: int = 5,
    heads: int = 2,
    channels: int = 3,
    points: int = 2,
    dtype: torch.dtype = torch.float64,
    spread: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs; locations in [-spread, 1 + spread] so some taps fall outside the maps."""
    total = sum(h * w for h, w in levels)
    value = torch.randn(batch, total, heads, channels, dtype=dtype)
    shapes = torch.tensor(levels, dtype=torch.int64)
    locations = torch.rand(batch, queries, heads, len(levels), points, 2, dtype=dtype)
    locations = locations * (1 + 2 * spread) - spread
    weights = torch.rand(batch, queries, heads, len(levels), points, dtype=dtype)
    return value, shapes, locations, weights


def naive_ms_deform_attn(
    value: torch.Tensor, levels: Levels, locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Point by point: 4 bilinear corners, pixel centres at (i + 0.5) / size, zeros outside."""
    batch, queries, heads, _, points, _ = locations.shape
    channels = value.shape[3]
    out = torch.zeros(batch, queries, heads, channels, dtype=value.dtype)
    starts = [0]
    for h, w in levels:
        starts.append(starts[-1] + h * w)
    for b in range(batch):
        for q in range(queries):
            for head in range(heads):
                for level, (height, width) in enumerate(levels):
                    for p in range(points):
                        x = float(locations[b, q, head, level, p, 0]) * width - 0.5
                        y = float(locations[b, q, head, level, p, 1]) * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        for dy in (0, 1):
                            for dx in (0, 1):
                                row, col = y0 + dy, x0 + dx
                                if not (0 <= row < height and 0 <= col < width):
                                    continue
                                tap = (1 - abs(x - col)) * (1 - abs(y - row))
                                pixel = value[b, starts[level] + row * width + col, head]
                                out[b, q, head] += weights[b, q, head, level, p] * tap * pixel
    return out.reshape(batch, queries, heads * channels)


@pytest.mark.parametrize(
    "levels",
    [[(4, 5)], [(1, 1)], [(5, 3), (3, 1), (1, 1)], [(7, 5), (3, 3), (2, 1)]],
    ids=["one-level", "1x1", "odd-with-1x1", "three-odd"],
)
def test_matches_the_pointwise_definition(levels: Levels) -> None:
    value, shapes, locations, weights = make_inputs(levels)
    torch.testing.assert_close(
        ms_deform_attn(value, shapes, locations, weights),
        naive_ms_deform_attn(value, levels, locations, weights),
    )


def test_border_and_outside_points() -> None:
    levels = [(3, 4), (2, 2)]
    value, shapes, _, weights = make_inputs(levels, queries=1, points=10)
    # edges, pixel centres, half a pixel outside (reads nothing), just inside, far outside
    coords = [0.0, 1.0, 0.125, 1 / 6, 5 / 6, -0.125, 1.125, -0.1, 1.1, -3.0]
    xs = torch.tensor(coords, dtype=torch.float64)
    ys = torch.tensor(coords[::-1], dtype=torch.float64)
    locations = torch.stack([xs, ys], dim=-1).expand(2, 1, 2, 2, 10, 2).contiguous()
    out = ms_deform_attn(value, shapes, locations, weights)
    torch.testing.assert_close(out, naive_ms_deform_attn(value, levels, locations, weights))


def test_pixel_centre_reads_that_pixel_in_x_y_order() -> None:
    """(x, y) = ((col + 0.5) / W, (row + 0.5) / H) reads value row-major at row * W + col."""
    levels = [(2, 2), (3, 5)]
    value, shapes, _, _ = make_inputs(levels, batch=1, heads=1, channels=4)
    row, col = 2, 3
    locations = torch.zeros(1, 1, 1, 2, 1, 2, dtype=torch.float64)
    locations[..., 1, 0, 0] = (col + 0.5) / 5
    locations[..., 1, 0, 1] = (row + 0.5) / 3
    weights = torch.zeros(1, 1, 1, 2, 1, dtype=torch.float64)
    weights[..., 1, 0] = 1.0
    out = ms_deform_attn(value, shapes, locations, weights)
    torch.testing.assert_close(out[0, 0], value[0, 4 + row * 5 + col, 0])


def test_non_contiguous_inputs_and_output_layout() -> None:
    levels = [(3, 4), (2, 1)]
    value, shapes, locations, weights = make_inputs(levels, dtype=torch.float32)
    wide = torch.randn(value.shape[0], value.shape[1], value.shape[2], 2 * value.shape[3])
    strided = wide[..., ::2]
    loc_t = locations.transpose(0, 1).contiguous().transpose(0, 1)
    weights_t = weights.transpose(1, 4).contiguous().transpose(1, 4)
    assert not strided.is_contiguous()
    assert not loc_t.is_contiguous()
    assert not weights_t.is_contiguous()
    out = ms_deform_attn(strided, shapes, loc_t, weights_t)
    torch.testing.assert_close(
        out, ms_deform_attn(strided.contiguous(), shapes, locations, weights)
    )
    assert out.shape == (2, 5, 6)
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype: torch.dtype) -> None:
    levels = [(5, 3), (3, 2), (1, 1)]
    value, shapes, locations, weights = (
        t.to(dtype) if t.is_floating_point() else t
        for t in make_inputs(levels, dtype=torch.float32)
    )
    out = ms_deform_attn(value, shapes, locations, weights)
    assert out.dtype == dtype
    expected = ms_deform_attn(value.float(), shapes, locations.float(), weights.float())
    torch.testing.assert_close(out, expected.to(dtype))


def test_dispatched_reference_matches() -> None:
    args = make_inputs([(3, 3), (2, 2)], dtype=torch.float32)
    torch.testing.assert_close(
        ops.ms_deform_attn(*args, backend="reference"), ms_deform_attn(*args)
    )


def test_gradcheck() -> None:
    levels = [(3, 4), (2, 1), (1, 1)]
    value, shapes, locations, weights = make_inputs(levels, batch=1, queries=3, channels=2)
    for tensor in (value, locations, weights):
        tensor.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, loc, w), (value, locations, weights)
    )


def _bad(**changes: object) -> tuple[object, ...]:
    value, shapes, locations, weights = make_inputs([(3, 4), (2, 2)], dtype=torch.float32)
    args: dict[str, object] = {
        "value": value,
        "spatial_shapes": shapes,
        "sampling_locations": locations,
        "attention_weights": weights,
    }
    args.update(changes)
    return tuple(args.values())


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (_bad(value=torch.zeros(2, 16, 6)), ValueError, "value must be a 4-D"),
        (_bad(value=torch.zeros(2, 15, 2, 3)), ValueError, "value must have S = sum"),
        (_bad(value=torch.zeros(2, 16, 3, 3)), ValueError, "value must have 2 heads"),
        (_bad(value=torch.zeros(2, 16, 2, 3, dtype=torch.int64)), TypeError, "value must have a"),
        (_bad(value=torch.zeros(1, 16, 2, 3)), ValueError, "batch sizes"),
        (_bad(spatial_shapes=torch.tensor([[3.0, 4.0]])), TypeError, "spatial_shapes must be int"),
        (_bad(spatial_shapes=torch.tensor([3, 4])), ValueError, "spatial_shapes must be a 2-D"),
        (_bad(spatial_shapes=torch.tensor([[3, 4, 1]])), ValueError, "spatial_shapes must be"),
        (_bad(spatial_shapes=torch.tensor([[4, 4], [0, 2]])), ValueError, "must be positive"),
        (_bad(spatial_shapes=[[3, 4], [2, 2]]), TypeError, "spatial_shapes must be a torch"),
        (_bad(sampling_locations=torch.zeros(2, 5, 2, 2, 2)), ValueError, "sampling_locations"),
        (_bad(sampling_locations=torch.zeros(2, 5, 2, 3, 2, 2)), ValueError, "sampling_loc"),
        (_bad(sampling_locations=torch.zeros(2, 5, 2, 2, 2, 3)), ValueError, "sampling_loc"),
        (_bad(attention_weights=torch.zeros(2, 5, 2, 2)), ValueError, "attention_weights must"),
        (_bad(attention_weights=torch.zeros(2, 5, 2, 2, 3)), ValueError, "sampling_locations"),
        (_bad(attention_weights=torch.zeros(2, 5, 2, 2, 2, device="meta")), ValueError, "device"),
    ],
)
def test_bad_input(args: tuple[object, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ms_deform_attn(*args)  # type: ignore[arg-type]
