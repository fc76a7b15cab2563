"""Multi-scale deformable attention (Mask2Former's pixel decoder) as Triton kernels: no C++/CUDA.

Same contract as :func:`sfm_core.functional.ms_deform_attn`. Every input is read through its own
strides (sliced or expanded views included); outputs and gradients are allocated dense.

Forward: one program owns a block of queries x a block of channels of one (batch, head); it walks
the levels and points, computes each point's 4 bilinear corners once and accumulates the weighted
corner rows (contiguous channel vectors of ``value``) in fp32.

Backward, without atomics (deterministic, bit-identical across runs):
* ``grad_sampling_locations`` and ``grad_attention_weights`` are per-point reductions over the
  head's channels, done by the program that owns the query (single writer).
* ``grad_value`` is the transpose of the gather: a *corners* kernel lists the 4 corners of every
  point as (value row key, fp32 coefficient ``a * w_corner``), corners outside the map get a key
  past the end; a stable sort by key plus ``searchsorted`` turn that into CSR (the corners that
  read each value row, in a fixed order); one program per block of value rows x channels then
  gathers ``sum coefficient * grad_out[query]`` over its rows' lists, in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from sfm_core.flops import ms_deform_attn_backward_macs, ms_deform_attn_macs
from sfm_core.functional.ms_deform_attn import check_ms_deform_attn
from sfm_triton._runtime import autotune_configs, cdiv, check_device, check_dtype

CORNERS = 4
_CORNERS = tl.constexpr(CORNERS)  # the same, readable inside kernels

# Tiles of 2-8 elements per thread: every point keeps 4 corner loads (and their int64 addresses)
# live; at 4 per thread the forward needs ~80 registers (sm_90, ptxas), at 8 ~160. The backward's
# per-query channel sums need more (~145 at 4 per thread; 32x32 on 8 or 16 warps spills). Every
# config compiles for sm_90 without spills (tests/compile_ms_deform_attn_for_gpu.py).
_FORWARD_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_Q": 16, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_Q": 16, "BLOCK_C": 32}, num_warps=8),
        triton.Config({"BLOCK_Q": 8, "BLOCK_C": 32}, num_warps=2),
        triton.Config({"BLOCK_Q": 32, "BLOCK_C": 32}, num_warps=8),
        triton.Config({"BLOCK_Q": 32, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_Q": 64, "BLOCK_C": 32}, num_warps=16),
    ]
)
_SAMPLING_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_Q": 16, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_Q": 16, "BLOCK_C": 32}, num_warps=8),
        triton.Config({"BLOCK_Q": 8, "BLOCK_C": 32}, num_warps=2),
        triton.Config({"BLOCK_Q": 32, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_Q": 64, "BLOCK_C": 32}, num_warps=16),
    ]
)
_ROW_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_S": 16, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_S": 32, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_S": 8, "BLOCK_C": 32}, num_warps=2),
        triton.Config({"BLOCK_S": 32, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_S": 16, "BLOCK_C": 64}, num_warps=8),
    ]
)
_CORNER_BLOCK = 256
# Keys: channels per head, levels x points, and the query (or value row) count bucketed to a
# power of two, so a new image size re-tunes only when it changes the bucket.
_KEY = ["C", "LP", "BUCKET"]


@triton.jit
def _corners(x, y, width, height):
    """Bilinear corners of normalised ``(x, y)`` in a ``height x width`` map (align_corners=False).

    Returns the top-left column/row, the weights of the right/bottom neighbours and the 4 corner
    validity masks (zero padding). Coordinates are clamped to [-2, size + 1] first: beyond that all
    four corners are outside anyway, and the clamp keeps the integer conversion in range.
    """
    w = width.to(tl.float32)
    h = height.to(tl.float32)
    px = tl.minimum(tl.maximum(x * w - 0.5, -2.0), w + 1.0)
    py = tl.minimum(tl.maximum(y * h - 0.5, -2.0), h + 1.0)
    x0f = tl.floor(px)
    y0f = tl.floor(py)
    fx = px - x0f
    fy = py - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    in_x0 = (x0 >= 0) & (x0 < width)
    in_x1 = (x0 >= -1) & (x0 + 1 < width)
    in_y0 = (y0 >= 0) & (y0 < height)
    in_y1 = (y0 >= -1) & (y0 + 1 < height)
    return x0, y0, fx, fy, in_x0 & in_y0, in_x1 & in_y0, in_x0 & in_y1, in_x1 & in_y1


@triton.jit
def _corner_rows(
    value_ptr, row0, width, svs, channels, svc, mask, ok00, ok01, ok10, ok11
):  # fmt: skip
    """The 4 corner rows ``[BLOCK_Q, BLOCK_C]`` in fp32 (zeros outside the map)."""
    base = value_ptr + (row0 * svs)[:, None] + (channels * svc)[None, :]
    below = width * svs
    v00 = tl.load(base, mask=mask & ok00[:, None], other=0.0).to(tl.float32)
    v01 = tl.load(base + svs, mask=mask & ok01[:, None], other=0.0).to(tl.float32)
    v10 = tl.load(base + below, mask=mask & ok10[:, None], other=0.0).to(tl.float32)
    v11 = tl.load(base + below + svs, mask=mask & ok11[:, None], other=0.0).to(tl.float32)
    return v00, v01, v10, v11


@triton.autotune(configs=_FORWARD_CONFIGS, key=_KEY)
@triton.jit
def _forward_kernel(
    value_ptr, shapes_ptr, starts_ptr, loc_ptr, weights_ptr, out_ptr,
    Q, HEADS, C, L, P, LP, BUCKET,
    svb, svs, svh, svc,
    slb, slq, slh, sll, slp, slx,
    swb, swq, swh, swl, swp,
    sob, soq, soc,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(2)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    q = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    query_mask = q < Q
    mask = query_mask[:, None] & (c < C)[None, :]
    loc_base = loc_ptr + b * slb + q * slq + h * slh
    weight_base = weights_ptr + b * swb + q * swq + h * swh
    value_base = value_ptr + b * svb + h * svh
    acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
    for level in range(L):
        height = tl.load(shapes_ptr + 2 * level).to(tl.int32)
        width = tl.load(shapes_ptr + 2 * level + 1).to(tl.int32)
        start = tl.load(starts_ptr + level)
        for point in range(P):
            at = loc_base + level * sll + point * slp
            x = tl.load(at, mask=query_mask, other=0.0).to(tl.float32)
            y = tl.load(at + slx, mask=query_mask, other=0.0).to(tl.float32)
            a = tl.load(weight_base + level * swl + point * swp, mask=query_mask, other=0.0).to(
                tl.float32
            )
            x0, y0, fx, fy, ok00, ok01, ok10, ok11 = _corners(x, y, width, height)
            row0 = start + y0.to(tl.int64) * width + x0
            v00, v01, v10, v11 = _corner_rows(
                value_base, row0, width, svs, c, svc, mask, ok00, ok01, ok10, ok11
            )
            fx = fx[:, None]
            fy = fy[:, None]
            top = v00 + fx * (v01 - v00)
            bottom = v10 + fx * (v11 - v10)
            acc += a[:, None] * (top + fy * (bottom - top))
    out = out_ptr + b * sob + (q * soq)[:, None] + ((h * C + c) * soc)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_SAMPLING_CONFIGS, key=_KEY)
@triton.jit
def _grad_sampling_kernel(
    grad_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, weights_ptr,
    grad_loc_ptr, grad_weights_ptr,
    Q, HEADS, C, L, P, LP, BUCKET,
    sgb, sgq, sgc,
    svb, svs, svh, svc,
    slb, slq, slh, sll, slp, slx,
    swb, swq, swh, swl, swp,
    NEED_LOC: tl.constexpr, NEED_WEIGHTS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Per point: ``dA = <g, bilinear>`` and ``dLoc = a <g, d bilinear / d (x, y)>`` over channels.

    Gradients are written dense: ``grad_weights`` ``[B, Q, heads, L, P]`` contiguous and
    ``grad_loc`` the same with a trailing 2.
    """
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    q = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    query_mask = q < Q
    loc_base = loc_ptr + b * slb + q * slq + h * slh
    weight_base = weights_ptr + b * swb + q * swq + h * swh
    value_base = value_ptr + b * svb + h * svh
    grad_base = grad_ptr + b * sgb + (q * sgq)[:, None]
    dense = ((b * Q + q) * HEADS + h) * LP  # first point of the query in the dense gradients
    for level in range(L):
        height = tl.load(shapes_ptr + 2 * level).to(tl.int32)
        width = tl.load(shapes_ptr + 2 * level + 1).to(tl.int32)
        start = tl.load(starts_ptr + level)
        for point in range(P):
            at = loc_base + level * sll + point * slp
            x = tl.load(at, mask=query_mask, other=0.0).to(tl.float32)
            y = tl.load(at + slx, mask=query_mask, other=0.0).to(tl.float32)
            x0, y0, fx, fy, ok00, ok01, ok10, ok11 = _corners(x, y, width, height)
            row0 = start + y0.to(tl.int64) * width + x0
            fx2 = fx[:, None]
            fy2 = fy[:, None]
            d_a = tl.zeros([BLOCK_Q], dtype=tl.float32)
            d_px = tl.zeros([BLOCK_Q], dtype=tl.float32)
            d_py = tl.zeros([BLOCK_Q], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
                mask = query_mask[:, None] & (c < C)[None, :]
                g = tl.load(grad_base + ((h * C + c) * sgc)[None, :], mask=mask, other=0.0).to(
                    tl.float32
                )
                v00, v01, v10, v11 = _corner_rows(
                    value_base, row0, width, svs, c, svc, mask, ok00, ok01, ok10, ok11
                )
                top = v00 + fx2 * (v01 - v00)
                bottom = v10 + fx2 * (v11 - v10)
                if NEED_WEIGHTS:
                    d_a += tl.sum(g * (top + fy2 * (bottom - top)), axis=1)
                if NEED_LOC:
                    d_px += tl.sum(g * ((v01 - v00) + fy2 * ((v11 - v10) - (v01 - v00))), axis=1)
                    d_py += tl.sum(g * (bottom - top), axis=1)
            index = dense + level * P + point
            if NEED_WEIGHTS:
                tl.store(
                    grad_weights_ptr + index,
                    d_a.to(grad_weights_ptr.dtype.element_ty),
                    mask=query_mask,
                )
            if NEED_LOC:
                a = tl.load(weight_base + level * swl + point * swp, mask=query_mask, other=0.0).to(
                    tl.float32
                )
                # px = x * W - 0.5: d/dx = W d/dpx (0 where the clamp in _corners bites, since
                # every corner is outside there and the sums are 0).
                grad_x = a * d_px * width.to(tl.float32)
                grad_y = a * d_py * height.to(tl.float32)
                dtype = grad_loc_ptr.dtype.element_ty
                tl.store(grad_loc_ptr + 2 * index, grad_x.to(dtype), mask=query_mask)
                tl.store(grad_loc_ptr + 2 * index + 1, grad_y.to(dtype), mask=query_mask)


@triton.jit
def _store_corner(keys_ptr, coefficients_ptr, entry, key, keys_end, inside, coefficient, live):
    tl.store(keys_ptr + entry, tl.where(inside, key, keys_end).to(tl.int32), mask=live)
    tl.store(coefficients_ptr + entry, coefficient, mask=live)


@triton.jit
def _corner_list_kernel(
    shapes_ptr, starts_ptr, loc_ptr, weights_ptr, keys_ptr, coefficients_ptr,
    N, S, Q, HEADS, L, P, KEYS_END,
    slb, slq, slh, sll, slp, slx,
    swb, swq, swh, swl, swp,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Point ``i`` (dense ``[B, Q, heads, L, P]`` order), corner ``k``: entry ``4 i + k`` gets the
    key ``(b heads + h) S + value row`` (``KEYS_END = B heads S`` outside the map) and the
    coefficient ``a w_corner``."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < N
    point = i % P
    level = (i // P) % L
    h = (i // (P * L)) % HEADS
    q = (i // (P * L * HEADS)) % Q
    b = i // (P * L * HEADS * Q)
    at = loc_ptr + b * slb + q * slq + h * slh + level * sll + point * slp
    x = tl.load(at, mask=live, other=0.0).to(tl.float32)
    y = tl.load(at + slx, mask=live, other=0.0).to(tl.float32)
    a = tl.load(
        weights_ptr + b * swb + q * swq + h * swh + level * swl + point * swp,
        mask=live,
        other=0.0,
    ).to(tl.float32)
    height = tl.load(shapes_ptr + 2 * level, mask=live, other=1).to(tl.int32)
    width = tl.load(shapes_ptr + 2 * level + 1, mask=live, other=1).to(tl.int32)
    start = tl.load(starts_ptr + level, mask=live, other=0)
    x0, y0, fx, fy, ok00, ok01, ok10, ok11 = _corners(x, y, width, height)
    key = (b * HEADS + h) * S + start + y0.to(tl.int64) * width + x0
    entry = _CORNERS * i
    gx, gy = 1.0 - fx, 1.0 - fy
    _store_corner(keys_ptr, coefficients_ptr, entry, key, KEYS_END, ok00, a * gx * gy, live)
    _store_corner(keys_ptr, coefficients_ptr, entry + 1, key + 1, KEYS_END, ok01, a * fx * gy, live)
    _store_corner(
        keys_ptr, coefficients_ptr, entry + 2, key + width, KEYS_END, ok10, a * gx * fy, live
    )
    _store_corner(
        keys_ptr, coefficients_ptr, entry + 3, key + width + 1, KEYS_END, ok11, a * fx * fy, live
    )


@triton.autotune(configs=_ROW_CONFIGS, key=_KEY)
@triton.jit
def _grad_value_kernel(
    grad_ptr, coefficients_ptr, order_ptr, offsets_ptr, grad_value_ptr,
    S, Q, HEADS, C, LP, BUCKET,
    sgb, sgq, sgc,
    sdb, sds, sdh, sdc,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``grad_value[b, s, h] = sum`` over the corners listed for row ``(b, h, s)`` of
    ``coefficient * grad_out[b, q, h]``; ``order`` lists entries ``4 i + k`` sorted by key."""
    bh = tl.program_id(2)
    b = (bh // HEADS).to(tl.int64)
    h = (bh % HEADS).to(tl.int64)
    s = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    row_mask = (s < S)[:, None]
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = (c < C)[None, :]
    # Per-row values stay [BLOCK_S, 1] columns (1-D ones inside the loop trip Triton's layouts).
    key = (bh * S + s)[:, None]
    first = tl.load(offsets_ptr + key, mask=row_mask, other=0)
    last = tl.load(offsets_ptr + key + 1, mask=row_mask, other=0)
    grad_base = grad_ptr + b * sgb + ((h * C + c) * sgc)[None, :]
    acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for j in range(tl.max(tl.max(last - first, axis=1), axis=0)):
        position = first + j
        listed = position < last
        entry = tl.load(order_ptr + position, mask=listed, other=0)
        coefficient = tl.load(coefficients_ptr + entry, mask=listed, other=0.0)
        q = (entry // (_CORNERS * LP * HEADS)) % Q
        g = tl.load(grad_base + q * sgq, mask=listed & channel_mask, other=0.0).to(tl.float32)
        acc += coefficient * g
    out = grad_value_ptr + b * sdb + h * sdh + (s * sds)[:, None] + (c * sdc)[None, :]
    tl.store(out, acc.to(grad_value_ptr.dtype.element_ty), mask=row_mask & channel_mask)


def _bucket(count: int) -> int:
    return max(count, 1).bit_length()


def _level_starts(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """First value row of every level (on the shapes' device, no host sync)."""
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return torch.cumsum(sizes, 0) - sizes


def _output_shape(value: torch.Tensor, sampling_locations: torch.Tensor) -> tuple[int, int, int]:
    batch, _, heads, channels = value.shape
    return batch, sampling_locations.shape[1], heads * channels


@torch.library.custom_op("sfm::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    check_device(
        value=value,
        spatial_shapes=spatial_shapes,
        sampling_locations=sampling_locations,
        attention_weights=attention_weights,
    )
    spatial_shapes = spatial_shapes.contiguous()  # the kernels read it as flat (H, W) pairs
    batch, _, heads, channels = value.shape
    queries, levels, points = sampling_locations.shape[1], *sampling_locations.shape[3:5]
    out = value.new_empty(_output_shape(value, sampling_locations))
    if out.numel() == 0:
        return out
    if levels * points == 0:
        return out.zero_()

    def grid(meta: dict[str, Any]) -> tuple[int, int, int]:
        return (cdiv(queries, meta["BLOCK_Q"]), cdiv(channels, meta["BLOCK_C"]), batch * heads)

    _forward_kernel[grid](
        value, spatial_shapes, _level_starts(spatial_shapes), sampling_locations,
        attention_weights, out,
        queries, heads, channels, levels, points, levels * points, _bucket(queries),
        *value.stride(), *sampling_locations.stride(), *attention_weights.stride(),
        *out.stride(),
    )  # fmt: skip
    return out


@_ms_deform_attn_op.register_fake
def _ms_deform_attn_fake(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    return value.new_empty(_output_shape(value, sampling_locations))


def _grad_value(
    grad: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    starts: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The transpose of the gather, as a gather over the sorted corner list (no atomics)."""
    batch, rows, heads, channels = value.shape
    grad_value = torch.empty(value.shape, dtype=value.dtype, device=value.device)
    queries, levels, points = sampling_locations.shape[1], *sampling_locations.shape[3:5]
    count = batch * queries * heads * levels * points
    keys_end = batch * heads * rows
    if grad_value.numel() == 0 or count == 0:
        return grad_value.zero_()
    keys = torch.empty(CORNERS * count, dtype=torch.int32, device=value.device)
    coefficients = torch.empty(CORNERS * count, dtype=torch.float32, device=value.device)
    _corner_list_kernel[(cdiv(count, _CORNER_BLOCK),)](
        spatial_shapes, starts, sampling_locations, attention_weights, keys, coefficients,
        count, rows, queries, heads, levels, points, keys_end,
        *sampling_locations.stride(), *attention_weights.stride(),
        BLOCK=_CORNER_BLOCK,
    )  # fmt: skip
    sorted_keys, order = torch.sort(keys, stable=True)
    offsets = torch.searchsorted(
        sorted_keys, torch.arange(keys_end + 1, dtype=torch.int32, device=value.device)
    )

    def grid(meta: dict[str, Any]) -> tuple[int, int, int]:
        return (cdiv(rows, meta["BLOCK_S"]), cdiv(channels, meta["BLOCK_C"]), batch * heads)

    _grad_value_kernel[grid](
        grad, coefficients, order, offsets, grad_value,
        rows, queries, heads, channels, levels * points, _bucket(rows),
        *grad.stride(), *grad_value.stride(),
    )  # fmt: skip
    return grad_value


@torch.library.custom_op("sfm::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    grad: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    need_value: bool,
    need_locations: bool,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_value, grad_sampling_locations, grad_attention_weights)``, dense; a gradient that
    is not needed comes back empty."""
    check_device(
        grad=grad,
        value=value,
        spatial_shapes=spatial_shapes,
        sampling_locations=sampling_locations,
        attention_weights=attention_weights,
    )
    spatial_shapes = spatial_shapes.contiguous()  # the kernels read it as flat (H, W) pairs
    starts = _level_starts(spatial_shapes)
    grad_value = (
        _grad_value(grad, value, spatial_shapes, starts, sampling_locations, attention_weights)
        if need_value
        else value.new_empty(0)
    )
    grad_loc = (
        torch.empty(sampling_locations.shape, dtype=sampling_locations.dtype, device=value.device)
        if need_locations
        else sampling_locations.new_empty(0)
    )
    grad_weights = (
        torch.empty(attention_weights.shape, dtype=attention_weights.dtype, device=value.device)
        if need_weights
        else attention_weights.new_empty(0)
    )
    batch, _, heads, channels = value.shape
    queries, levels, points = sampling_locations.shape[1], *sampling_locations.shape[3:5]
    if not (need_locations or need_weights) or batch * queries * heads * levels * points == 0:
        return grad_value, grad_loc, grad_weights
    if channels == 0:
        return grad_value, grad_loc.zero_(), grad_weights.zero_()

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (cdiv(queries, meta["BLOCK_Q"]), batch * heads)

    _grad_sampling_kernel[grid](
        grad, value, spatial_shapes, starts, sampling_locations, attention_weights,
        grad_loc, grad_weights,
        queries, heads, channels, levels, points, levels * points, _bucket(queries),
        *grad.stride(), *value.stride(), *sampling_locations.stride(),
        *attention_weights.stride(),
        NEED_LOC=need_locations, NEED_WEIGHTS=need_weights,
    )  # fmt: skip
    return grad_value, grad_loc, grad_weights


@_ms_deform_attn_backward_op.register_fake
def _ms_deform_attn_backward_fake(
    grad: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    need_value: bool,
    need_locations: bool,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        value.new_empty(value.shape) if need_value else value.new_empty(0),
        sampling_locations.new_empty(sampling_locations.shape)
        if need_locations
        else sampling_locations.new_empty(0),
        attention_weights.new_empty(attention_weights.shape)
        if need_weights
        else attention_weights.new_empty(0),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(
    ctx: Any, grad: torch.Tensor
) -> tuple[torch.Tensor | None, None, torch.Tensor | None, torch.Tensor | None]:
    value, spatial_shapes, sampling_locations, attention_weights = ctx.saved_tensors
    need_value, _, need_locations, need_weights = ctx.needs_input_grad
    grad_value, grad_loc, grad_weights = _ms_deform_attn_backward_op(
        grad,
        value,
        spatial_shapes,
        sampling_locations,
        attention_weights,
        need_value,
        need_locations,
        need_weights,
    )
    return (
        grad_value if need_value else None,
        None,
        grad_loc if need_locations else None,
        grad_weights if need_weights else None,
    )


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.sfm.ms_deform_attn)
def _ms_deform_attn_flops(
    value_shape: Any, shapes_shape: Any, loc_shape: Any, *args: Any, **kwargs: Any
) -> int:
    return 2 * ms_deform_attn_macs(value_shape, loc_shape)


@register_flop_formula(torch.ops.sfm.ms_deform_attn_backward)
def _ms_deform_attn_backward_flops(
    grad_shape: Any, value_shape: Any, shapes_shape: Any, loc_shape: Any, *args: Any, **kwargs: Any
) -> int:
    return 2 * ms_deform_attn_backward_macs(value_shape, loc_shape)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Triton :func:`sfm_core.functional.ms_deform_attn`: same signature, semantics and checks.

    float32/float16/bfloat16 inputs on CUDA (or the CPU under ``TRITON_INTERPRET=1``), any
    strides; fp32 accumulation, output ``[B, Q, heads * C_h]`` in ``value.dtype``, differentiable
    in ``value``, ``sampling_locations`` and ``attention_weights``. The argument checks read
    ``spatial_shapes`` on the host: keep it on the CPU to avoid a device sync (it is copied to
    the device for the kernels).
    """
    check_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights)
    check_dtype("value", value)
    check_dtype("sampling_locations", sampling_locations)
    check_dtype("attention_weights", attention_weights)
    check_device(
        value=value, sampling_locations=sampling_locations, attention_weights=attention_weights
    )
    batch, rows, heads, _ = value.shape
    if batch * heads > 65535:
        raise ValueError(f"value must have B * heads <= 65535, got shape {tuple(value.shape)}")
    if batch * heads * rows >= 2**31 - 1:
        raise ValueError(f"value must have B * heads * S < 2**31 - 1, got {tuple(value.shape)}")
    shapes = spatial_shapes.to(value.device, non_blocking=True)
    return torch.ops.sfm.ms_deform_attn(  # type: ignore[no-any-return]
        value, shapes, sampling_locations, attention_weights
    )
