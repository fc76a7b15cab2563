"""Non-uniform upsampling (METHOD.md §3.1) as Triton kernels: ``rasterize``, ``gather`` and their composition.

Both methods of the reference (:mod:`sfm_core.functional.lattice_cells`): ``"quads"`` (default;
bilinear within the quads of the lattice extended by its ring to the target's edge pixel
centres, 4 taps) and ``"triangles"`` (METHOD.md §3.1, 3 taps).

``rasterize`` (not differentiable), four launches with fixed shapes (the compaction counter would
not survive the autotuner's repeated timing runs), containment decided in float64 like the
reference:

1. *owner*: one program per block of cells (quads or triangles) scans each cell's bounding box
   (in chunks of pixels) and ``atomic_min``-s the cell id into an int32 owner map. The minimum is
   order independent, so "the lowest cell id wins on shared edges" holds exactly. A quad covers
   the union of the two triangles on its interior diagonal.
2. *weights*: one program per block of target pixels recomputes the weights in its owner cell
   (barycentric, or the closed-form inverse of the quad's bilinear map), and appends the pixels
   no cell covers to a compact list (one atomic per program reserves the slots, a prefix sum
   places the pixels).
3. *chunk bounds*: the bounding box of every run of 32 consecutive lattice ids.
4. *nearest*: the listed pixels (the band outside the lattice hull, about half an upsampling
   factor wide, plus holes a folded lattice leaves) take their nearest lattice point, ties to the
   lowest id as ``argmin``: a strided sub-lattice of about 256 points bounds each pixel's
   distance, then only the chunks whose box lies within the bound are scanned. Exact; the cost
   per block of pixels is the sub-lattice, one box test per chunk, and the nearby chunks. The
   grid is sized for the worst case (every pixel uncovered) and idle programs return at once,
   so nothing syncs with the host (CUDA-graph capturable).

``gather`` (any number of taps T: 4 from quads, 3 from triangles) forward: one program per block
of target pixels x channels sums its T weighted source values in fp32. Backward: ``grad_weights`` is a per-pixel channel reduction (single writer);
``grad_z`` is the transpose, formulated as a gather over an inverse index (CSR: the (pixel,
vertex) entries sorted stably by source, offsets by ``searchsorted``), so every source value is
summed by one program in a fixed order: no atomics, deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from sfm_core._checks import check_same_batch, check_size, check_tensor
from sfm_core.flops import gather_macs
from sfm_core.functional.lattice_cells import (
    DEFAULT_METHOD,
    INSIDE_TOL,
    MIN_DET,
    TAPS,
    check_method,
)
from sfm_core.functional.positions import check_positions
from sfm_triton._runtime import autotune_configs, cdiv, check_device, check_dtype

_FAR = float(2**20)  # the reference's clamp of far-out positions (image sizes)

_NO_OWNER = 2**31 - 1
_POSITION_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_WEIGHT_DTYPES = _POSITION_DTYPES

# Rasterize launches use fixed shapes: their cost is small next to the gather, and the compaction
# kernel's counter would be corrupted by the autotuner's repeated timing runs.
_OWNER_BLOCK_T, _OWNER_BLOCK_S = 32, 16
_QUAD_OWNER_BLOCK_S = 16
# Taps a gather takes (grad_weights keeps one accumulator per tap): 4 (quads) or 3 (triangles).
_MAX_TAPS = 4
_PIXEL_BLOCK = 128
_NEAREST_BLOCK_U, _NEAREST_BLOCK_L = 32, 32
_NEAREST_SUBSET = 256  # lattice points that bound each uncovered pixel's nearest distance

# At most 16 tile elements per thread (larger tiles spill); every config compiles for sm_90
# without spills (tests/compile_nonuniform_lprm_for_gpu.py).
_GATHER_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 32}, num_warps=8),
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 64}, num_warps=8),
    ]
)
_SCATTER_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_S": 32, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_S": 64, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_S": 32, "BLOCK_C": 64}, num_warps=4),
        triton.Config({"BLOCK_S": 64, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_S": 64, "BLOCK_C": 64}, num_warps=8),
    ]
)
# Keys: channels, layout of z, and the pixel (or source) count bucketed to a power of two.
_KEY = ["K", "CHANNELS_LAST", "PIXEL_BUCKET"]


# ---------------------------------------------------------------------------------------------
# rasterize
# ---------------------------------------------------------------------------------------------


@triton.jit
def _lattice_point(pos_ptr, offset, spc, Wo, Ho, mask):
    """Lattice point ``(x, y)`` in target pixel units, float64."""
    x = tl.load(pos_ptr + offset, mask=mask, other=0.0).to(tl.float64) * Wo
    y = tl.load(pos_ptr + offset + spc, mask=mask, other=0.0).to(tl.float64) * Ho
    return x, y


@triton.jit
def _triangle(pos_ptr, pos_base, spc, sph, spw, w, Wo, Ho, tri, mask):
    """Vertex ids and coordinates of lattice triangle ``tri`` (cell row-major x 2 + k).

    The cell a=(i, j), b=(i, j+1), c=(i+1, j), d=(i+1, j+1) is split on its shorter diagonal
    (tie: a-d) into (a, b, d), (a, d, c), or else (a, b, c), (b, d, c).
    """
    cell = tri // 2
    first = (tri % 2) == 0
    cells_per_row = tl.maximum(w - 1, 1)  # a one-column lattice has no cells (nor callers here)
    i = cell // cells_per_row
    j = cell % cells_per_row
    a = i * w + j
    base = pos_base + i.to(tl.int64) * sph + j.to(tl.int64) * spw
    xa, ya = _lattice_point(pos_ptr, base, spc, Wo, Ho, mask)
    xb, yb = _lattice_point(pos_ptr, base + spw, spc, Wo, Ho, mask)
    xc, yc = _lattice_point(pos_ptr, base + sph, spc, Wo, Ho, mask)
    xd, yd = _lattice_point(pos_ptr, base + sph + spw, spc, Wo, Ho, mask)
    along_ad = (xa - xd) * (xa - xd) + (ya - yd) * (ya - yd) <= (xb - xc) * (xb - xc) + (
        yb - yc
    ) * (yb - yc)
    use_a = along_ad | first
    use_d = along_ad & first
    v0 = tl.where(use_a, a, a + 1)
    x0 = tl.where(use_a, xa, xb)
    y0 = tl.where(use_a, ya, yb)
    v1 = tl.where(first, a + 1, a + w + 1)
    x1 = tl.where(first, xb, xd)
    y1 = tl.where(first, yb, yd)
    v2 = tl.where(use_d, a + w + 1, a + w)
    x2 = tl.where(use_d, xd, xc)
    y2 = tl.where(use_d, yd, yc)
    return v0, v1, v2, x0, y0, x1, y1, x2, y2


@triton.jit
def _determinant(x0, y0, x1, y1, x2, y2):
    return (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)


@triton.jit
def _barycentric(x0, y0, x1, y1, x2, y2, det, qx, qy):
    """Barycentric coordinates of ``(qx, qy)`` (the reference's formula, float64)."""
    l0 = ((y1 - y2) * (qx - x2) + (x2 - x1) * (qy - y2)) / det
    l1 = ((y2 - y0) * (qx - x2) + (x0 - x2) * (qy - y2)) / det
    return l0, l1, 1.0 - l0 - l1


@triton.jit
def _ring_point(pos_ptr, pos_base, spc, sph, spw, h, w, Ho, Wo, row, col, mask):
    """Id and position of point ``(row, col)`` (``-1..h``, ``-1..w``) of the extended lattice.

    A ring point repeats its edge neighbour, pushed out to the target's edge pixel-centre line
    (the reference's ``extended_lattice``).
    """
    i = tl.minimum(tl.maximum(row, 0), h - 1)
    j = tl.minimum(tl.maximum(col, 0), w - 1)
    x, y = _lattice_point(
        pos_ptr, pos_base + i.to(tl.int64) * sph + j.to(tl.int64) * spw, spc, Wo, Ho, mask
    )
    x = tl.where(col < 0, tl.minimum(x, 0.5), x)
    # (0 + Wo) in float64: Wo may be a specialised constant (1).
    x = tl.where(w <= col, tl.maximum(x, tl.zeros_like(x) + Wo - 0.5), x)
    y = tl.where(row < 0, tl.minimum(y, 0.5), y)
    y = tl.where(h <= row, tl.maximum(y, tl.zeros_like(y) + Ho - 0.5), y)
    return i * w + j, x, y


@triton.jit
def _quad(pos_ptr, pos_base, spc, sph, spw, h, w, Ho, Wo, quad, mask):
    """Vertex ids and coordinates of quad ``quad`` of the extended lattice (row-major cells).

    Vertices a = (row, col), b = (row, col+1), c = (row+1, col), d = (row+1, col+1).
    """
    row = quad // (w + 1) - 1
    col = quad % (w + 1) - 1
    va, xa, ya = _ring_point(pos_ptr, pos_base, spc, sph, spw, h, w, Ho, Wo, row, col, mask)
    vb, xb, yb = _ring_point(pos_ptr, pos_base, spc, sph, spw, h, w, Ho, Wo, row, col + 1, mask)
    vc, xc, yc = _ring_point(pos_ptr, pos_base, spc, sph, spw, h, w, Ho, Wo, row + 1, col, mask)
    vd, xd, yd = _ring_point(pos_ptr, pos_base, spc, sph, spw, h, w, Ho, Wo, row + 1, col + 1, mask)
    return va, vb, vc, vd, xa, ya, xb, yb, xc, yc, xd, yd


@triton.jit
def _cross(ux, uy, vx, vy):
    return ux * vy - uy * vx


@triton.jit
def _quad_triangles(xa, ya, xb, yb, xc, yc, xd, yd):
    """The two triangles on the quad's interior diagonal: (a, b, d), (a, d, c) when b and c lie on
    opposite sides of a-d, else (a, b, c), (b, d, c) (the reference's ``locate_in_quad``)."""
    side_b = _cross(xd - xa, yd - ya, xb - xa, yb - ya)
    side_c = _cross(xd - xa, yd - ya, xc - xa, yc - ya)
    split_ad = side_b * side_c < 0
    x2 = tl.where(split_ad, xd, xc)
    y2 = tl.where(split_ad, yd, yc)
    x3 = tl.where(split_ad, xa, xb)
    y3 = tl.where(split_ad, ya, yb)
    return xa, ya, xb, yb, x2, y2, x3, y3, xd, yd, xc, yc


@triton.jit
def _in_triangle(x0, y0, x1, y1, x2, y2, qx, qy, MIN_DET: tl.constexpr, TOL: tl.constexpr):
    """The reference's containment test: a proper triangle, barycentric weights >= -TOL."""
    det = _determinant(x0, y0, x1, y1, x2, y2)
    proper = tl.abs(det) > MIN_DET
    l0, l1, l2 = _barycentric(x0, y0, x1, y1, x2, y2, tl.where(proper, det, 1.0), qx, qy)
    return proper & (l0 >= -TOL) & (l1 >= -TOL) & (l2 >= -TOL)


@triton.jit
def _finite_root(t):
    """The reference's ``nan_to_num(0.5, 5, -4)`` then clamp to ``[-4, 5]``."""
    t = tl.where(t != t, 0.5, t)
    return tl.minimum(tl.maximum(t, -4.0), 5.0)


@triton.jit
def _s_of(t, ex, ey, fx, fy, gx, gy, hx, hy):
    ux = ex + t * gx
    uy = ey + t * gy
    norm = ux * ux + uy * uy
    s = ((hx - t * fx) * ux + (hy - t * fy) * uy) / tl.where(norm > 0, norm, 1.0)
    s = tl.where(norm > 0, s, 0.5)
    s = tl.where(s != s, 0.5, s)
    s = tl.where(s == float("inf"), 5.0, s)
    return tl.where(s == float("-inf"), -4.0, s)


@triton.jit
def _outside(s, t):
    return tl.maximum(tl.maximum(tl.maximum(-s, s - 1), tl.maximum(-t, t - 1)), 0.0)


@triton.jit
def _inverse_bilinear(xa, ya, xb, yb, xc, yc, xd, yd, qx, qy):
    """``(s, t)`` in ``[0, 1]^2`` that the quad's bilinear map sends to ``(qx, qy)`` (float64).

    The reference's closed form (``sfm_core.functional.lattice_cells.locate_in_quad``).
    """
    ex = xb - xa
    ey = yb - ya
    fx = xc - xa
    fy = yc - ya
    gx = (xd - xc) - ex
    gy = (yd - yc) - ey
    hx = qx - xa
    hy = qy - ya
    k2 = _cross(gx, gy, fx, fy)
    k1 = _cross(ex, ey, fx, fy) + _cross(hx, hy, gx, gy)
    k0 = _cross(hx, hy, ex, ey)
    root = tl.sqrt(tl.maximum(k1 * k1 - 4.0 * k2 * k0, 0.0))
    half = -0.5 * (k1 + tl.where(k1 < 0, -root, root))
    t_small = tl.where(half != 0, k0 / tl.where(half != 0, half, 1.0), 5.0)
    t_small = _finite_root(tl.where((half == 0) & (k2 == 0), 0.5, t_small))
    t_large = _finite_root(tl.where(k2 != 0, half / tl.where(k2 != 0, k2, 1.0), 5.0))
    s_small = _s_of(t_small, ex, ey, fx, fy, gx, gy, hx, hy)
    s_large = _s_of(t_large, ex, ey, fx, fy, gx, gy, hx, hy)
    take_small = _outside(s_small, t_small) <= _outside(s_large, t_large)
    s = tl.minimum(tl.maximum(tl.where(take_small, s_small, s_large), 0.0), 1.0)
    t = tl.minimum(tl.maximum(tl.where(take_small, t_small, t_large), 0.0), 1.0)
    return s, t


@triton.jit
def _quad_owner_kernel(
    pos_ptr, owner_ptr,
    h, w, Ho, Wo, quads,
    spb, spc, sph, spw,
    MIN_DET: tl.constexpr, TOL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """``owner[b, pixel] = min`` id of the extended lattice's quads containing the pixel centre."""
    b = tl.program_id(1).to(tl.int64)
    quad = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    quad_mask = quad < quads
    _, _, _, _, xa, ya, xb, yb, xc, yc, xd, yd = _quad(
        pos_ptr, b * spb, spc, sph, spw, h, w, Ho, Wo, quad, quad_mask
    )
    x_min = tl.minimum(tl.minimum(xa, xb), tl.minimum(xc, xd))
    x_max = tl.maximum(tl.maximum(xa, xb), tl.maximum(xc, xd))
    y_min = tl.minimum(tl.minimum(ya, yb), tl.minimum(yc, yd))
    y_max = tl.maximum(tl.maximum(ya, yb), tl.maximum(yc, yd))
    x_lo = tl.minimum(tl.maximum(tl.ceil(x_min - 0.5 - 1e-7), 0), Wo)
    x_hi = tl.minimum(tl.maximum(tl.floor(x_max - 0.5 + 1e-7), -1), Wo - 1)
    y_lo = tl.minimum(tl.maximum(tl.ceil(y_min - 0.5 - 1e-7), 0), Ho)
    y_hi = tl.minimum(tl.maximum(tl.floor(y_max - 0.5 + 1e-7), -1), Ho - 1)
    box_w = tl.maximum(x_hi - x_lo + 1, 0).to(tl.int32)
    box_h = tl.maximum(y_hi - y_lo + 1, 0).to(tl.int32)
    x0, y0, x1, y1, x2, y2, x3, y3, x4, y4, x5, y5 = _quad_triangles(xa, ya, xb, yb, xc, yc, xd, yd)
    count = tl.where(quad_mask, box_w * box_h, 0)
    col0 = x_lo.to(tl.int32)
    row0 = y_lo.to(tl.int32)
    width = tl.maximum(box_w, 1)
    owner_base = owner_ptr + b * Ho * Wo
    for s0 in range(0, tl.max(count, axis=0), BLOCK_S):
        slot = s0 + tl.arange(0, BLOCK_S)
        in_box = slot[None, :] < count[:, None]
        col = col0[:, None] + slot[None, :] % width[:, None]
        row = row0[:, None] + slot[None, :] // width[:, None]
        qx = col.to(tl.float64) + 0.5
        qy = row.to(tl.float64) + 0.5
        # Per-quad values as [BLOCK_T, 1] columns (1-D float64 arithmetic on them breaks Triton
        # 3.6's layout pass here).
        first = _in_triangle(
            x0[:, None], y0[:, None], x1[:, None], y1[:, None], x2[:, None], y2[:, None],
            qx, qy, MIN_DET, TOL,
        )  # fmt: skip
        second = _in_triangle(
            x3[:, None], y3[:, None], x4[:, None], y4[:, None], x5[:, None], y5[:, None],
            qx, qy, MIN_DET, TOL,
        )  # fmt: skip
        ids = tl.broadcast_to(quad[:, None], [BLOCK_T, BLOCK_S])
        tl.atomic_min(owner_base + row.to(tl.int64) * Wo + col, ids, mask=in_box & (first | second))


@triton.jit
def _quad_weights_kernel(
    pos_ptr, owner_ptr, index_ptr, weights_ptr, missing_ptr, missing_count_ptr,
    h, w, Ho, Wo,
    spb, spc, sph, spw,
    NO_OWNER: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Inverse-bilinear index/weights (4 taps) of the covered pixels; the others go to ``missing``."""
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pixel_mask = p < Ho * Wo
    flat = b * Ho * Wo + p
    owner = tl.load(owner_ptr + flat, mask=pixel_mask, other=NO_OWNER)
    covered = pixel_mask & (owner != NO_OWNER)
    va, vb, vc, vd, xa, ya, xb, yb, xc, yc, xd, yd = _quad(
        pos_ptr, b * spb, spc, sph, spw, h, w, Ho, Wo, tl.where(covered, owner, 0), covered
    )
    qx = (p % Wo).to(tl.float64) + 0.5
    qy = (p // Wo).to(tl.float64) + 0.5
    s, t = _inverse_bilinear(xa, ya, xb, yb, xc, yc, xd, yd, qx, qy)
    out = flat * 4
    tl.store(index_ptr + out, va.to(tl.int64), mask=covered)
    tl.store(index_ptr + out + 1, vb.to(tl.int64), mask=covered)
    tl.store(index_ptr + out + 2, vc.to(tl.int64), mask=covered)
    tl.store(index_ptr + out + 3, vd.to(tl.int64), mask=covered)
    dtype = weights_ptr.dtype.element_ty
    tl.store(weights_ptr + out, ((1 - s) * (1 - t)).to(dtype), mask=covered)
    tl.store(weights_ptr + out + 1, (s * (1 - t)).to(dtype), mask=covered)
    tl.store(weights_ptr + out + 2, ((1 - s) * t).to(dtype), mask=covered)
    tl.store(weights_ptr + out + 3, (s * t).to(dtype), mask=covered)
    missing = (pixel_mask & ~covered).to(tl.int32)
    start = tl.atomic_add(missing_count_ptr, tl.sum(missing, axis=0))
    slot = start + tl.cumsum(missing, axis=0) - 1
    tl.store(missing_ptr + slot, flat, mask=missing != 0)


@triton.jit
def _owner_kernel(
    pos_ptr, owner_ptr,
    h, w, Ho, Wo, triangles,
    spb, spc, sph, spw,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """``owner[b, pixel] = min`` id of the triangles containing the pixel centre."""
    b = tl.program_id(1).to(tl.int64)
    tri = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tri_mask = tri < triangles
    _, _, _, x0, y0, x1, y1, x2, y2 = _triangle(
        pos_ptr, b * spb, spc, sph, spw, w, Wo, Ho, tri, tri_mask
    )
    # Pixel centres (k + 0.5) inside the bounding box, in index units (the reference's bounds).
    x_lo = tl.minimum(tl.maximum(tl.ceil(tl.minimum(tl.minimum(x0, x1), x2) - 0.5 - 1e-7), 0), Wo)
    x_hi = tl.minimum(
        tl.maximum(tl.floor(tl.maximum(tl.maximum(x0, x1), x2) - 0.5 + 1e-7), -1), Wo - 1
    )
    y_lo = tl.minimum(tl.maximum(tl.ceil(tl.minimum(tl.minimum(y0, y1), y2) - 0.5 - 1e-7), 0), Ho)
    y_hi = tl.minimum(tl.maximum(tl.floor(tl.maximum(tl.maximum(y0, y1), y2) - 0.5 + 1e-7), -1), Ho - 1)  # fmt: skip
    box_w = tl.maximum(x_hi - x_lo + 1, 0).to(tl.int32)
    box_h = tl.maximum(y_hi - y_lo + 1, 0).to(tl.int32)
    det = _determinant(x0, y0, x1, y1, x2, y2)
    proper = tri_mask & (tl.abs(det) > 1e-12)
    count = tl.where(proper, box_w * box_h, 0)
    det = tl.where(proper, det, 1.0)  # degenerate or padding triangles scan nothing
    col0 = x_lo.to(tl.int32)
    row0 = y_lo.to(tl.int32)
    width = tl.maximum(box_w, 1)
    owner_base = owner_ptr + b * Ho * Wo
    for s0 in range(0, tl.max(count, axis=0), BLOCK_S):
        slot = s0 + tl.arange(0, BLOCK_S)
        in_box = slot[None, :] < count[:, None]
        col = col0[:, None] + slot[None, :] % width[:, None]
        row = row0[:, None] + slot[None, :] // width[:, None]
        qx = col.to(tl.float64) + 0.5
        qy = row.to(tl.float64) + 0.5
        l0, l1, l2 = _barycentric(
            x0[:, None], y0[:, None], x1[:, None], y1[:, None], x2[:, None], y2[:, None],
            det[:, None], qx, qy,
        )  # fmt: skip
        inside = in_box & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        ids = tl.broadcast_to(tri[:, None], [BLOCK_T, BLOCK_S])
        tl.atomic_min(owner_base + row.to(tl.int64) * Wo + col, ids, mask=inside)


@triton.jit
def _weights_kernel(
    pos_ptr, owner_ptr, index_ptr, weights_ptr, missing_ptr, missing_count_ptr,
    h, w, Ho, Wo,
    spb, spc, sph, spw,
    NO_OWNER: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Index/weights of the covered pixels; the uncovered ones go to the ``missing`` list."""
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pixel_mask = p < Ho * Wo
    flat = b * Ho * Wo + p
    owner = tl.load(owner_ptr + flat, mask=pixel_mask, other=NO_OWNER)
    covered = pixel_mask & (owner != NO_OWNER)
    v0, v1, v2, x0, y0, x1, y1, x2, y2 = _triangle(
        pos_ptr, b * spb, spc, sph, spw, w, Wo, Ho, tl.where(covered, owner, 0), covered
    )
    qx = (p % Wo).to(tl.float64) + 0.5
    qy = (p // Wo).to(tl.float64) + 0.5
    det = tl.where(covered, _determinant(x0, y0, x1, y1, x2, y2), 1.0)
    l0, l1, l2 = _barycentric(x0, y0, x1, y1, x2, y2, det, qx, qy)
    l0 = tl.maximum(l0, 0.0)
    l1 = tl.maximum(l1, 0.0)
    l2 = tl.maximum(l2, 0.0)
    total = tl.where(covered, l0 + l1 + l2, 1.0)
    out = flat * 3
    tl.store(index_ptr + out, v0.to(tl.int64), mask=covered)
    tl.store(index_ptr + out + 1, v1.to(tl.int64), mask=covered)
    tl.store(index_ptr + out + 2, v2.to(tl.int64), mask=covered)
    dtype = weights_ptr.dtype.element_ty
    tl.store(weights_ptr + out, (l0 / total).to(dtype), mask=covered)
    tl.store(weights_ptr + out + 1, (l1 / total).to(dtype), mask=covered)
    tl.store(weights_ptr + out + 2, (l2 / total).to(dtype), mask=covered)
    missing = (pixel_mask & ~covered).to(tl.int32)
    start = tl.atomic_add(missing_count_ptr, tl.sum(missing, axis=0))
    slot = start + tl.cumsum(missing, axis=0) - 1
    tl.store(missing_ptr + slot, flat, mask=missing != 0)


@triton.jit
def _chunk_bounds_kernel(
    pos_ptr, bounds_ptr,
    h, w, Ho, Wo, chunks,
    spb, spc, sph, spw,
    BLOCK_L: tl.constexpr,
):  # fmt: skip
    """Bounding box (x_min, x_max, y_min, y_max) of each chunk of ``BLOCK_L`` lattice ids."""
    b = tl.program_id(1)
    chunk = tl.program_id(0)
    lattice = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = lattice < h * w
    offset = (lattice // w).to(tl.int64) * sph + (lattice % w).to(tl.int64) * spw
    px, py = _lattice_point(pos_ptr, b.to(tl.int64) * spb + offset, spc, Wo, Ho, mask)
    out = bounds_ptr + (b.to(tl.int64) * chunks + chunk) * 4
    tl.store(out, tl.min(tl.where(mask, px, float("inf")), axis=0))
    tl.store(out + 1, tl.max(tl.where(mask, px, float("-inf")), axis=0))
    tl.store(out + 2, tl.min(tl.where(mask, py, float("inf")), axis=0))
    tl.store(out + 3, tl.max(tl.where(mask, py, float("-inf")), axis=0))


@triton.jit
def _nearest_kernel(
    pos_ptr, bounds_ptr, index_ptr, weights_ptr, missing_ptr, missing_count_ptr,
    h, w, Ho, Wo, chunks, step, subset_rows, subset_cols,
    spb, spc, sph, spw,
    TAPS: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """Listed pixels take their nearest lattice point (lowest id on ties), weights (1, 0, ...).

    Exact, without visiting the whole lattice: the sub-lattice of every ``step``-th row and column
    (first and last included) bounds each pixel's nearest squared distance; then only the chunks
    of ``BLOCK_L`` consecutive lattice ids whose bounding box lies within that bound are scanned,
    in id order. A skipped chunk's points are all strictly farther than the bound, and the bound
    is the distance of an actual point, so no skipped point can win or tie.
    """
    start = tl.program_id(0) * BLOCK_U
    count = tl.load(missing_count_ptr)
    if start < count:
        u = start + tl.arange(0, BLOCK_U)
        u_mask = u < count
        flat = tl.load(missing_ptr + u, mask=u_mask, other=0)
        b = flat // (Ho * Wo)
        p = flat % (Ho * Wo)
        qx = (p % Wo).to(tl.float64) + 0.5
        qy = (p // Wo).to(tl.float64) + 0.5
        pos_base = b * spb
        bound = tl.full([BLOCK_U], float("inf"), tl.float64)
        for f0 in range(0, subset_rows * subset_cols, BLOCK_L):
            f = f0 + tl.arange(0, BLOCK_L)
            f_mask = f < subset_rows * subset_cols
            i = tl.minimum((f // subset_cols) * step, h - 1)
            j = tl.minimum((f % subset_cols) * step, w - 1)
            offset = i.to(tl.int64) * sph + j.to(tl.int64) * spw
            mask = u_mask[:, None] & f_mask[None, :]
            px, py = _lattice_point(pos_ptr, pos_base[:, None] + offset[None, :], spc, Wo, Ho, mask)
            dx = px - qx[:, None]
            dy = py - qy[:, None]
            distance = tl.where(f_mask[None, :], dx * dx + dy * dy, float("inf"))
            bound = tl.minimum(bound, tl.min(distance, axis=1))
        best = tl.full([BLOCK_U], float("inf"), tl.float64)
        best_id = tl.zeros([BLOCK_U], tl.int32)
        bounds_base = bounds_ptr + b * chunks * 4
        for chunk in range(chunks):
            box = bounds_base + chunk * 4
            gap_x = tl.maximum(
                tl.maximum(tl.load(box, mask=u_mask, other=0.0) - qx, 0.0),
                qx - tl.load(box + 1, mask=u_mask, other=0.0),
            )
            gap_y = tl.maximum(
                tl.maximum(tl.load(box + 2, mask=u_mask, other=0.0) - qy, 0.0),
                qy - tl.load(box + 3, mask=u_mask, other=0.0),
            )
            near = u_mask & (gap_x * gap_x + gap_y * gap_y <= bound)
            if tl.max(near.to(tl.int32), axis=0) > 0:
                lattice = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
                l_mask = lattice < h * w
                offset = (lattice // w).to(tl.int64) * sph + (lattice % w).to(tl.int64) * spw
                mask = u_mask[:, None] & l_mask[None, :]
                px, py = _lattice_point(
                    pos_ptr, pos_base[:, None] + offset[None, :], spc, Wo, Ho, mask
                )
                dx = px - qx[:, None]
                dy = py - qy[:, None]
                distance = tl.where(l_mask[None, :], dx * dx + dy * dy, float("inf"))
                chunk_best = tl.min(distance, axis=1)
                chunk_id = tl.argmin(distance, axis=1) + chunk * BLOCK_L
                better = chunk_best < best  # strict: an earlier chunk keeps a tie
                best = tl.where(better, chunk_best, best)
                best_id = tl.where(better, chunk_id, best_id)
        out = flat * TAPS
        dtype = weights_ptr.dtype.element_ty
        for t in tl.static_range(TAPS):
            tl.store(index_ptr + out + t, best_id.to(tl.int64), mask=u_mask)
            tl.store(
                weights_ptr + out + t,
                tl.full([BLOCK_U], 1.0 if t == 0 else 0.0, dtype),
                mask=u_mask,
            )


def _rasterize_impl(
    positions: torch.Tensor, out_h: int, out_w: int, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, _, height, width = positions.shape
    device = positions.device
    taps = TAPS[method]
    weight_dtype = torch.float64 if positions.dtype == torch.float64 else torch.float32
    index = torch.empty(batch, out_h, out_w, taps, dtype=torch.int64, device=device)
    weights = torch.empty(batch, out_h, out_w, taps, dtype=weight_dtype, device=device)
    owner = torch.full((batch, out_h, out_w), _NO_OWNER, dtype=torch.int32, device=device)
    strides = positions.stride()
    pixels = batch * out_h * out_w
    missing = torch.empty(pixels, dtype=torch.int64, device=device)
    missing_count = torch.zeros(1, dtype=torch.int32, device=device)
    pixel_grid = (cdiv(out_h * out_w, _PIXEL_BLOCK), batch)
    if method == "quads":
        quads = (height + 1) * (width + 1)
        _quad_owner_kernel[(cdiv(quads, _OWNER_BLOCK_T), batch)](
            positions, owner,
            height, width, out_h, out_w, quads,
            *strides,
            MIN_DET=MIN_DET, TOL=INSIDE_TOL,
            BLOCK_T=_OWNER_BLOCK_T, BLOCK_S=_QUAD_OWNER_BLOCK_S,
        )  # fmt: skip
        _quad_weights_kernel[pixel_grid](
            positions, owner, index, weights, missing, missing_count,
            height, width, out_h, out_w,
            *strides,
            NO_OWNER=_NO_OWNER, BLOCK=_PIXEL_BLOCK,
        )  # fmt: skip
    else:
        triangles = 2 * (height - 1) * (width - 1)
        if triangles > 0:
            _owner_kernel[(cdiv(triangles, _OWNER_BLOCK_T), batch)](
                positions, owner,
                height, width, out_h, out_w, triangles,
                *strides,
                BLOCK_T=_OWNER_BLOCK_T, BLOCK_S=_OWNER_BLOCK_S,
            )  # fmt: skip
        _weights_kernel[pixel_grid](
            positions, owner, index, weights, missing, missing_count,
            height, width, out_h, out_w,
            *strides,
            NO_OWNER=_NO_OWNER, BLOCK=_PIXEL_BLOCK,
        )  # fmt: skip
    chunks = cdiv(height * width, _NEAREST_BLOCK_L)
    bounds = torch.empty(batch, chunks, 4, dtype=torch.float64, device=device)
    _chunk_bounds_kernel[(chunks, batch)](
        positions, bounds,
        height, width, out_h, out_w, chunks,
        *strides,
        BLOCK_L=_NEAREST_BLOCK_L,
    )  # fmt: skip
    step = max(1, math.isqrt(height * width // _NEAREST_SUBSET))
    _nearest_kernel[(cdiv(pixels, _NEAREST_BLOCK_U),)](
        positions, bounds, index, weights, missing, missing_count,
        height, width, out_h, out_w, chunks, step, cdiv(height - 1, step) + 1,
        cdiv(width - 1, step) + 1,
        *strides,
        TAPS=taps, BLOCK_U=_NEAREST_BLOCK_U, BLOCK_L=_NEAREST_BLOCK_L,
    )  # fmt: skip
    return index, weights


@torch.library.custom_op("sfm::rasterize", mutates_args=())
def _rasterize_op(
    positions: torch.Tensor, size: Sequence[int], method: str = DEFAULT_METHOD
) -> tuple[torch.Tensor, torch.Tensor]:
    check_device(positions=positions)
    return _rasterize_impl(positions, int(size[0]), int(size[1]), check_method(method))


@_rasterize_op.register_fake
def _rasterize_fake(
    positions: torch.Tensor, size: Sequence[int], method: str = DEFAULT_METHOD
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (positions.shape[0], size[0], size[1], TAPS[check_method(method)])
    weight_dtype = torch.float64 if positions.dtype == torch.float64 else torch.float32
    return (
        positions.new_empty(shape, dtype=torch.int64),
        positions.new_empty(shape, dtype=weight_dtype),
    )


def _check_positions(positions: torch.Tensor) -> None:
    check_positions(positions)
    if positions.shape[0] > 65535:
        raise ValueError(f"positions must have a batch of at most 65535, got {positions.shape[0]}")
    if positions.shape[2] * positions.shape[3] >= 2**30:
        raise ValueError(
            f"positions must have fewer than 2**30 lattice points, got shape {tuple(positions.shape)}"
        )
    check_dtype("positions", positions, _POSITION_DTYPES)
    check_device(positions=positions)


def rasterize(
    positions: torch.Tensor, size: tuple[int, int], *, method: str = DEFAULT_METHOD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton :func:`sfm_core.functional.rasterize`: same signature, semantics and dtypes.

    Containment is decided in float64 (as the reference); a pixel centre exactly on a shared
    edge may still go to the other cell where the last bits of the arithmetic differ. An
    image with a non-finite position gets index 0 and NaN weights, as in the reference.
    """
    out_h, out_w = check_size("size", size)
    check_method(method)
    _check_positions(positions)
    if positions.shape[0] * out_h * out_w >= 2**31:
        raise ValueError(f"B * Ho * Wo must stay below 2**31, got size {size!r}")
    # As the reference: an image with a NaN or infinite position is rasterized as a harmless
    # lattice, then gets index 0 and NaN weights (the kernels would cast NaN to an index); far
    # finite points are pulled in to +-2**20 images. No host synchronisation.
    detached = positions.detach()
    broken = ~torch.isfinite(detached).flatten(1).all(dim=1).view(-1, 1, 1, 1)
    far = min(_FAR, torch.finfo(detached.dtype).max)
    safe = torch.where(broken, 0.5, detached).clamp(-far, far)
    index, weights = torch.ops.sfm.rasterize(safe, [out_h, out_w], method)
    return index.masked_fill(broken, 0), weights.masked_fill(broken, math.nan)


# ---------------------------------------------------------------------------------------------
# gather
# ---------------------------------------------------------------------------------------------


def _output_format(z: torch.Tensor) -> torch.memory_format:
    """Channels-last in, channels-last out; anything else gives a contiguous output."""
    channels_last = z.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not z.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@triton.jit
def _plane_offset(pixel, width, stride_h, stride_w, FLAT: tl.constexpr):
    """Memory offset of flat pixel ``pixel`` (int32) in a plane; ``FLAT``: rows are contiguous."""
    offset = pixel.to(tl.int64) * stride_w
    if not FLAT:
        offset = (pixel // width).to(tl.int64) * stride_h + (pixel % width).to(tl.int64) * stride_w
    return offset


@triton.autotune(configs=_GATHER_CONFIGS, key=_KEY)
@triton.jit
def _gather_forward_kernel(
    z_ptr, index_ptr, weights_ptr, out_ptr,
    K, w, P, Wo,
    szb, szc, szh, szw,
    sib, sip, sit,
    swb, swp, swt,
    sob, soc, soh, sow,
    CHANNELS_LAST, PIXEL_BUCKET,
    TAPS: tl.constexpr, FLAT_Z: tl.constexpr, FLAT_OUT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = p < P
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = pixel_mask[:, None] & (c < K)[None, :]
    z_base = z_ptr + b * szb + c[None, :] * szc
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for t in range(TAPS):
        src = tl.load(index_ptr + b * sib + p * sip + t * sit, mask=pixel_mask, other=0)
        weight = tl.load(weights_ptr + b * swb + p * swp + t * swt, mask=pixel_mask, other=0.0)
        src_offset = _plane_offset(src.to(tl.int32), w, szh, szw, FLAT_Z)
        value = tl.load(z_base + src_offset[:, None], mask=mask, other=0.0)
        acc += weight.to(tl.float32)[:, None] * value.to(tl.float32)
    dst = b * sob + c[None, :] * soc + _plane_offset(p, Wo, soh, sow, FLAT_OUT)[:, None]
    tl.store(out_ptr + dst, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_GATHER_CONFIGS, key=_KEY)
@triton.jit
def _gather_grad_weights_kernel(
    grad_ptr, z_ptr, index_ptr, grad_weights_ptr,
    K, w, P, Wo,
    sgb, sgc, sgh, sgw,
    szb, szc, szh, szw,
    sib, sip, sit,
    sdb, sdp, sdt,
    CHANNELS_LAST, PIXEL_BUCKET,
    TAPS: tl.constexpr, FLAT_GRAD: tl.constexpr, FLAT_Z: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``grad_weights(p, t) = sum_k dY(k, p) z(k, index(p, t))``, looping over the channels.

    Up to 4 taps, each with its own accumulator (a [BLOCK_P, 4] one spills on sm_90); the source
    offsets are re-read per channel block (cached), not held in registers.
    """
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = p < P
    index_base = index_ptr + b * sib + p * sip
    grad_pix = _plane_offset(p, Wo, sgh, sgw, FLAT_GRAD)
    dot0 = tl.zeros([BLOCK_P], dtype=tl.float32)
    dot1 = tl.zeros([BLOCK_P], dtype=tl.float32)
    dot2 = tl.zeros([BLOCK_P], dtype=tl.float32)
    dot3 = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, K, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask = pixel_mask[:, None] & (c < K)[None, :]
        grad = tl.load(
            grad_ptr + b * sgb + c[None, :] * sgc + grad_pix[:, None], mask=mask, other=0.0
        ).to(tl.float32)
        z_base = z_ptr + b * szb + c[None, :] * szc
        for t in range(TAPS):  # a runtime loop: unrolled, every tap's tile loads are hoisted
            offset = _tap_offset(index_base, t, sit, pixel_mask, w, szh, szw, FLAT_Z)
            value = tl.load(z_base + offset[:, None], mask=mask, other=0.0).to(tl.float32)
            dot = tl.sum(grad * value, axis=1)
            dot0 += tl.where(t == 0, dot, 0.0)
            dot1 += tl.where(t == 1, dot, 0.0)
            dot2 += tl.where(t == 2, dot, 0.0)
            dot3 += tl.where(t == 3, dot, 0.0)
    out = grad_weights_ptr + b * sdb + p * sdp
    dtype = grad_weights_ptr.dtype.element_ty
    tl.store(out, dot0.to(dtype), mask=pixel_mask)
    if TAPS > 1:
        tl.store(out + sdt, dot1.to(dtype), mask=pixel_mask)
    if TAPS > 2:
        tl.store(out + 2 * sdt, dot2.to(dtype), mask=pixel_mask)
    if TAPS > 3:
        tl.store(out + 3 * sdt, dot3.to(dtype), mask=pixel_mask)


@triton.jit
def _tap_offset(index_base, t, sit, pixel_mask, w, szh, szw, FLAT_Z: tl.constexpr):
    """Memory offset in a ``z`` plane of tap ``t``'s source, per pixel."""
    src = tl.load(index_base + t * sit, mask=pixel_mask, other=0).to(tl.int32)
    return _plane_offset(src, w, szh, szw, FLAT_Z)


@triton.autotune(configs=_SCATTER_CONFIGS, key=_KEY)
@triton.jit
def _gather_grad_z_kernel(
    grad_ptr, weights_ptr, order_ptr, offsets_ptr, grad_z_ptr,
    K, w, S, P, Wo,
    sgb, sgc, sgh, sgw,
    sdb, sdc, sdh, sdw,
    CHANNELS_LAST, PIXEL_BUCKET,
    TAPS: tl.constexpr, FLAT_GRAD: tl.constexpr, FLAT_DZ: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``grad_z(k, s) = sum`` over the entries ``(p, t)`` listed for source ``s`` of ``w dY(k, p)``.

    ``order`` lists the flat entries ``(b P + p) T + t`` sorted by source ``b S + s``;
    ``offsets[b S + s]`` is where the source's run starts; ``weights`` is contiguous ``[B, P, T]``.
    """
    b = tl.program_id(2).to(tl.int64)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    source_mask = s < S
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    channel_mask = (c < K)[None, :]
    # Per-source values stay [BLOCK_S, 1] columns: 1-D ones inside this loop break Triton 3.6's
    # layout pass ("mask type matches ptr type").
    key = (b * S + s)[:, None]
    first = tl.load(offsets_ptr + key, mask=source_mask[:, None], other=0)
    last = tl.load(offsets_ptr + key + 1, mask=source_mask[:, None], other=0)
    grad_base = grad_ptr + b * sgb + c[None, :] * sgc
    acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for j in range(tl.max(tl.max(last - first, axis=1), axis=0)):
        position = first + j
        listed = position < last
        entry = tl.load(order_ptr + position, mask=listed, other=0)
        weight = tl.load(weights_ptr + entry, mask=listed, other=0.0).to(tl.float32)
        p = (entry // TAPS - b * P).to(tl.int32)
        grad = tl.load(
            grad_base + _plane_offset(p, Wo, sgh, sgw, FLAT_GRAD),
            mask=listed & channel_mask,
            other=0.0,
        ).to(tl.float32)
        acc += weight * grad
    dst = b * sdb + c[None, :] * sdc + _plane_offset(s, w, sdh, sdw, FLAT_DZ)[:, None]
    tl.store(
        grad_z_ptr + dst,
        acc.to(grad_z_ptr.dtype.element_ty),
        mask=source_mask[:, None] & channel_mask,
    )


def _flat_index(index: torch.Tensor) -> torch.Tensor:
    """``index`` as ``[B, P, T]`` (a view when possible)."""
    return index.reshape(index.shape[0], -1, index.shape[-1])


def _flat_plane(tensor: torch.Tensor) -> bool:
    """Whether ``[..., h, w]`` rows follow each other in memory (NCHW, channels-last, expanded)."""
    return tensor.stride(-2) == tensor.shape[-1] * tensor.stride(-1)


def _is_channels_last(tensor: torch.Tensor) -> int:
    return int(_output_format(tensor) == torch.channels_last)


def _bucket(count: int) -> int:
    return max(count, 1).bit_length()


@torch.library.custom_op("sfm::gather", mutates_args=())
def _gather_op(z: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    check_device(z=z, index=index, weights=weights)
    batch, channels, _, width = z.shape
    out_h, out_w = index.shape[1:3]
    out = torch.empty(
        batch, channels, out_h, out_w, dtype=z.dtype, device=z.device,
        memory_format=_output_format(z),
    )  # fmt: skip
    if out.numel() == 0:
        return out
    flat_index, flat_weights = _flat_index(index), _flat_index(weights)
    pixels = out_h * out_w

    def grid(meta: dict[str, Any]) -> tuple[int, int, int]:
        return (cdiv(pixels, meta["BLOCK_P"]), cdiv(channels, meta["BLOCK_C"]), batch)

    _gather_forward_kernel[grid](
        z, flat_index, flat_weights, out,
        channels, width, pixels, out_w,
        *z.stride(), *flat_index.stride(), *flat_weights.stride(), *out.stride(),
        _is_channels_last(z), _bucket(pixels),
        TAPS=index.shape[-1], FLAT_Z=_flat_plane(z), FLAT_OUT=_flat_plane(out),
    )  # fmt: skip
    return out


@_gather_op.register_fake
def _gather_fake(z: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return torch.empty(
        (z.shape[0], z.shape[1], index.shape[1], index.shape[2]),
        dtype=z.dtype,
        device=z.device,
        memory_format=_output_format(z),
    )


def _grad_z(
    grad: torch.Tensor, z: torch.Tensor, index: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The transpose of the gather, as a gather over the inverse index (no atomics)."""
    batch, channels, height, width = z.shape
    grad_z = torch.empty_like(z)
    sources = height * width
    if grad_z.numel() == 0:
        return grad_z
    flat_index = _flat_index(index).to(torch.int64)
    pixels = flat_index.shape[1]
    base = torch.arange(batch, device=z.device, dtype=torch.int64).view(-1, 1, 1) * sources
    keys, order = torch.sort((flat_index + base).flatten(), stable=True)
    offsets = torch.searchsorted(
        keys, torch.arange(batch * sources + 1, device=z.device, dtype=torch.int64)
    )
    flat_weights = _flat_index(weights).contiguous()

    def grid(meta: dict[str, Any]) -> tuple[int, int, int]:
        return (cdiv(sources, meta["BLOCK_S"]), cdiv(channels, meta["BLOCK_C"]), batch)

    _gather_grad_z_kernel[grid](
        grad, flat_weights, order, offsets, grad_z,
        channels, width, sources, pixels, index.shape[2],
        *grad.stride(), *grad_z.stride(),
        _is_channels_last(z), _bucket(sources),
        TAPS=index.shape[-1], FLAT_GRAD=_flat_plane(grad), FLAT_DZ=_flat_plane(grad_z),
    )  # fmt: skip
    return grad_z


def _grad_weights(grad: torch.Tensor, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per (pixel, vertex) channel dot products, one program per pixel block (single writer)."""
    batch, channels, _, width = z.shape
    grad_weights = torch.empty(index.shape, dtype=torch.float32, device=z.device)
    if grad_weights.numel() == 0 or channels == 0:
        return grad_weights.zero_()
    flat_index, flat_grad_weights = _flat_index(index), _flat_index(grad_weights)
    pixels = flat_index.shape[1]

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (cdiv(pixels, meta["BLOCK_P"]), batch)

    _gather_grad_weights_kernel[grid](
        grad, z, flat_index, flat_grad_weights,
        channels, width, pixels, index.shape[2],
        *grad.stride(), *z.stride(), *flat_index.stride(), *flat_grad_weights.stride(),
        _is_channels_last(z), _bucket(pixels),
        TAPS=index.shape[-1], FLAT_GRAD=_flat_plane(grad), FLAT_Z=_flat_plane(z),
    )  # fmt: skip
    return grad_weights


@torch.library.custom_op("sfm::gather_backward", mutates_args=())
def _gather_backward_op(
    grad: torch.Tensor,
    z: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor,
    need_z: bool,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_z, grad_weights)``; a gradient that is not needed comes back empty."""
    check_device(grad=grad, z=z, index=index, weights=weights)
    grad_z = _grad_z(grad, z, index, weights) if need_z else z.new_empty(0)
    grad_weights = (
        _grad_weights(grad, z, index).to(weights.dtype) if need_weights else weights.new_empty(0)
    )
    return grad_z, grad_weights


@_gather_backward_op.register_fake
def _gather_backward_fake(
    grad: torch.Tensor,
    z: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor,
    need_z: bool,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_z = torch.empty_like(z) if need_z else z.new_empty(0)
    grad_weights = weights.new_empty(index.shape) if need_weights else weights.new_empty(0)
    return grad_z, grad_weights


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(
    ctx: Any, grad: torch.Tensor
) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
    z, index, weights = ctx.saved_tensors
    need_z, _, need_weights = ctx.needs_input_grad
    grad_z, grad_weights = _gather_backward_op(grad, z, index, weights, need_z, need_weights)
    return (grad_z if need_z else None), None, (grad_weights if need_weights else None)


_gather_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.sfm.gather)
def _gather_flops(z_shape: Any, index_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * gather_macs(z_shape, index_shape)


@register_flop_formula(torch.ops.sfm.gather_backward)
def _gather_backward_flops(
    grad_shape: Any,
    z_shape: Any,
    index_shape: Any,
    weights_shape: Any,
    need_z: bool,
    need_weights: bool,
    **kwargs: Any,
) -> int:
    """The transposed blend for ``grad_z``; one channel dot product per weight."""
    return 2 * gather_macs(z_shape, index_shape) * (int(need_z) + int(need_weights))


def _check_gather(z: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> None:
    check_tensor("z", z, ndim=4, shape_hint="[B, K, h, w]")
    check_tensor("index", index, ndim=4, floating=False, shape_hint="[B, Ho, Wo, T]")
    check_tensor("weights", weights, ndim=4, shape_hint="[B, Ho, Wo, T]")
    check_same_batch(z=z, index=index, weights=weights)
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be int32 or int64, got {index.dtype}")
    if index.shape != weights.shape or not 1 <= index.shape[-1] <= _MAX_TAPS:
        raise ValueError(
            f"index and weights must both be [B, Ho, Wo, T] with T >= 1 taps (at most "
            f"{_MAX_TAPS} in sfm_triton), got {tuple(index.shape)} and {tuple(weights.shape)}"
        )
    if z.shape[0] > 65535:
        raise ValueError(f"z must have a batch of at most 65535, got {z.shape[0]}")
    if z.shape[2] * z.shape[3] >= 2**31 or index.shape[1] * index.shape[2] >= 2**31:
        raise ValueError("h * w and Ho * Wo must stay below 2**31")
    check_dtype("z", z)
    check_dtype("weights", weights, _WEIGHT_DTYPES)
    check_device(z=z, index=index, weights=weights)


def gather(z: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Triton :func:`sfm_core.functional.gather`: same signature, semantics and dtypes.

    Like the reference it checks that ``index`` lies in ``[0, h*w)``, which reads two values back
    to the host; :func:`nonuniform_upsample` skips that check (its indices come from rasterize).
    """
    _check_gather(z, index, weights)
    sources = z.shape[2] * z.shape[3]
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= sources):
        raise ValueError(f"index must lie in [0, h*w) = [0, {sources}), got values outside it")
    return torch.ops.sfm.gather(z, index, weights)  # type: ignore[no-any-return]


def nonuniform_upsample(
    z: torch.Tensor,
    positions: torch.Tensor,
    size: tuple[int, int],
    *,
    method: str = DEFAULT_METHOD,
) -> torch.Tensor:
    """Triton :func:`sfm_core.functional.nonuniform_upsample`: ``gather(z, *rasterize(...))``.

    Gradient flows to ``z`` only; no host synchronisation (CUDA-graph capturable).
    """
    check_tensor("z", z, ndim=4, shape_hint="[B, K, h, w]")
    check_positions(positions)
    check_method(method)
    check_same_batch(z=z, positions=positions)
    if positions.shape[-2:] != z.shape[-2:]:
        raise ValueError(
            f"positions and z must share h, w, got positions {tuple(positions.shape)} and "
            f"z {tuple(z.shape)}"
        )
    check_dtype("z", z)
    check_device(z=z, positions=positions)
    index, weights = rasterize(positions, size, method=method)
    return torch.ops.sfm.gather(z, index, weights)  # type: ignore[no-any-return]
