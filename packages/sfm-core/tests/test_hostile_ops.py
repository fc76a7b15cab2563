"""Hostile input to every public op of sfm_core.ops / sfm_core.functional (issue 11, item 1).

Each example ends in a ValueError/TypeError naming an argument, or a result of the documented
shape and dtype, finite in every image whose inputs were finite. Empty semantics (RELIABILITY.md):
batch 0 and 0 channels give an empty result of the documented shape; an input map with H or W of
0 is refused with a ValueError naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sfm_core import functional, ops
from sfm_core._checks import compute_dtype

from .hostile_inputs import (
    FLOATS,
    HOSTILE,
    Spec,
    assert_finite_images,
    assert_result,
    grid_values,
    non_finite_images,
    normal,
    outcome,
    scalar,
    specs,
    unit,
)

BATCH = st.sampled_from([0, 1, 2, 3])


def either(*flags: torch.Tensor) -> torch.Tensor:
    """Images broken in any of the inputs (a broadcast OR of per-image flags)."""
    out = flags[0]
    for flag in flags[1:]:
        if flag.shape == out.shape:
            out = out | flag
    return out


@HOSTILE
@given(
    logits=specs([None, 1, None, None]),
    window=scalar(st.integers(1, 4)),
    fwhm=scalar(st.floats(0.5, 6.0)),
    s_min=scalar(st.sampled_from([1e-3, 0.1, 1.0])),
)
def test_saliency_grid(logits: Spec, window: Any, fwhm: Any, s_min: Any) -> None:
    tensor = logits.build(normal)
    result = outcome(
        lambda: ops.saliency_grid(tensor, window=window, fwhm=fwhm, s_min=s_min),
        ["logits", "window", "fwhm", "s_min"],
    )
    if result is not None:
        b, _, h, w = tensor.shape
        assert_result(result, (b, h, w, 2), compute_dtype(tensor.dtype), non_finite_images(tensor))


@HOSTILE
@given(x=specs([None, None, None, None]), grid=specs([None, None, None, 2], dtypes=FLOATS))
def test_resample(x: Spec, grid: Spec) -> None:
    features, where = x.build(normal), grid.build(grid_values)
    result = outcome(lambda: ops.resample(features, where), ["x", "grid", "batch"])
    if result is not None:
        b, c = features.shape[:2]
        shape = (b, c, *where.shape[1:3])
        broken = either(non_finite_images(features), non_finite_images(where))
        assert_result(result, shape, features.dtype, broken)


@HOSTILE
@given(
    z=specs([None, None, None, None]),
    positions=specs([None, 2, None, None], dtypes=FLOATS),
    size=scalar(st.tuples(st.integers(1, 6), st.integers(1, 6))),
)
def test_nonuniform_upsample(z: Spec, positions: Spec, size: Any) -> None:
    values, where = z.build(normal), positions.build(unit)
    result = outcome(
        lambda: ops.nonuniform_upsample(values, where, size), ["z", "positions", "size", "batch"]
    )
    if result is not None:
        shape = (*values.shape[:2], *size)
        broken = either(non_finite_images(values), non_finite_images(where))
        assert_result(result, shape, values.dtype, broken)


@pytest.mark.parametrize(("method", "taps"), [("quads", 4), ("triangles", 3)])
@HOSTILE
@given(
    positions=specs([None, 2, None, None], dtypes=FLOATS), size=st.tuples(*[st.integers(1, 5)] * 2)
)
def test_rasterize_indices_stay_in_range(
    positions: Spec, size: tuple[int, int], method: str, taps: int
) -> None:
    where = positions.build(unit)
    result = outcome(
        lambda: functional.rasterize(where, size, method=method), ["positions", "size"]
    )
    if result is not None:
        index, weights = result
        b, _, h, w = where.shape
        assert index.shape == weights.shape == (b, *size, taps)
        assert index.dtype == torch.int64
        if index.numel():
            assert int(index.min()) >= 0
            assert int(index.max()) < h * w
        assert_finite_images(weights, non_finite_images(where))


@HOSTILE
@given(
    v=specs([None, None, None, None]),
    logits=specs([None, 9, None, None]),
    dilation=scalar(st.sampled_from([1, 2, 7, 10**6])),
)
def test_lprm_aggregate(v: Spec, logits: Spec, dilation: Any) -> None:
    values, relation = v.build(normal), logits.build(normal)
    result = outcome(
        lambda: ops.lprm_aggregate(values, relation, dilation), ["v", "logits", "dilation", "batch"]
    )
    if result is not None:
        broken = either(non_finite_images(values), non_finite_images(relation))
        assert_result(result, values.shape, values.dtype, broken)


@st.composite
def deform_inputs(draw: st.DrawFn) -> tuple[Any, ...]:
    batch, queries, heads = draw(BATCH), draw(st.sampled_from([0, 1, 3])), draw(st.integers(1, 2))
    channels, points = draw(st.sampled_from([0, 1, 4])), draw(st.sampled_from([0, 1, 2]))
    levels = draw(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=2))
    rows = sum(h * w for h, w in levels)
    if draw(st.integers(0, 5)) == 0:
        rows += 1  # value rows that disagree with spatial_shapes
    value = draw(specs([batch, rows, heads, channels], rank_change=False))
    locations = draw(specs([batch, queries, heads, len(levels), points, 2], dtypes=FLOATS))
    weights = draw(specs([batch, queries, heads, len(levels), points], dtypes=FLOATS))
    shapes: Any = torch.tensor(levels, dtype=torch.int64)
    kind = draw(st.integers(0, 7))
    if kind == 0:
        shapes = np.array(levels)
    elif kind == 1:
        shapes = shapes.to(torch.int32)
    elif kind == 2:
        shapes = -shapes
    return value, shapes, locations, weights


@HOSTILE
@given(inputs=deform_inputs())
def test_ms_deform_attn(inputs: tuple[Any, ...]) -> None:
    value_spec, shapes, locations_spec, weights_spec = inputs
    value = value_spec.build(normal)
    locations = locations_spec.build(unit)
    weights = weights_spec.build(unit)
    names = ["value", "spatial_shapes", "sampling_locations", "attention_weights", "batch"]
    result = outcome(lambda: ops.ms_deform_attn(value, shapes, locations, weights), names)
    if result is not None:
        b, q, heads = weights.shape[:3]
        broken = either(
            non_finite_images(value), non_finite_images(locations), non_finite_images(weights)
        )
        assert_result(result, (b, q, heads * value.shape[3]), value.dtype, broken)


@HOSTILE
@given(
    positions=specs([None, 2, None, None], dtypes=FLOATS),
    grid=specs([None, None, None, 2], dtypes=FLOATS),
    size=scalar(st.tuples(st.integers(1, 4), st.integers(1, 4))),
)
def test_positions(positions: Spec, grid: Spec, size: Any) -> None:
    where, warp = positions.build(unit), grid.build(grid_values)
    resized = outcome(lambda: functional.resize_positions(where, size), ["positions", "size"])
    if resized is not None:
        assert_result(resized, (*where.shape[:2], *size), where.dtype, non_finite_images(where))
    composed = outcome(
        lambda: functional.compose_positions(where, warp), ["positions", "grid", "batch"]
    )
    if composed is not None:
        shape = (where.shape[0], 2, *warp.shape[1:3])
        broken = either(non_finite_images(where), non_finite_images(warp))
        assert_result(composed, shape, where.dtype, broken)


@HOSTILE
@given(
    batch=scalar(st.integers(0, 2)),
    height=scalar(st.integers(1, 5)),
    width=scalar(st.sampled_from([1, 4, 300, 3000])),
    dtype=st.sampled_from([*FLOATS, torch.int32, "float32", None]),
)
def test_identity_positions(batch: Any, height: Any, width: Any, dtype: Any) -> None:
    result = outcome(
        lambda: functional.identity_positions(batch, height, width, dtype=dtype),
        ["batch", "height", "width", "dtype", "lattice"],
    )
    if result is not None:
        expected = dtype or torch.get_default_dtype()
        assert_result(result, (batch, 2, height, width), expected, torch.zeros(batch, dtype=bool))
        if result.numel():  # distinct pixel centres, all inside (0, 1)
            assert bool((result > 0).all() & (result < 1).all())
            assert result[0, 0, 0].unique().numel() == width


@pytest.mark.parametrize(
    "call",
    [
        lambda: ops.saliency_grid([[0.0]]),
        lambda: ops.resample(np.zeros((1, 1, 2, 2)), torch.zeros(1, 1, 1, 2)),
        lambda: ops.resample(torch.zeros(1, 1, 2, 2), [[0.0, 0.0]]),
        lambda: ops.nonuniform_upsample(torch.zeros(1, 1, 2, 2), np.zeros((1, 2, 2, 2)), (2, 2)),
        lambda: ops.lprm_aggregate(torch.zeros(1, 1, 2, 2), (0.0,) * 9, 1),
        lambda: ops.ms_deform_attn(None, torch.tensor([[1, 1]]), None, None),
    ],
)
def test_ops_refuse_non_tensors_before_dispatch(call: Any) -> None:
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor, got"):
        call()


def test_nan_position_spoils_only_its_image() -> None:
    """Issue 11's example: one NaN position no longer rejects the batch (index out of range)."""
    positions = functional.identity_positions(3, 4, 4, dtype=torch.float64)
    positions = positions + 0.01 * torch.randn_like(positions)
    z = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    clean = functional.nonuniform_upsample(z, positions, (7, 9))
    positions[1, 0, 2, 2] = float("nan")
    spoiled = functional.nonuniform_upsample(z, positions, (7, 9))
    assert bool(spoiled[1].isnan().all())
    torch.testing.assert_close(spoiled[[0, 2]], clean[[0, 2]], rtol=0, atol=0)


def test_huge_dilation_equals_the_map_extent() -> None:
    """A dilation past the map reads the edge pixels: the same result, bounded memory."""
    v, logits = torch.randn(2, 3, 4, 6), torch.randn(2, 9, 4, 6)
    extent = functional.lprm_aggregate(v, logits, 5)
    torch.testing.assert_close(functional.lprm_aggregate(v, logits, 10**6), extent)
