"""Non-uniform upsampling: demodulation of a warped lattice onto the uniform grid (METHOD.md §3.1).

Every target pixel centre takes a blend of the lattice values of the cell that contains it (the
lowest cell id wins on shared edges): by default bilinear within the lattice quads, whose hull
is extended to the target's edge pixel centres (exactly bilinear resizing on a uniform lattice);
``method="triangles"`` is METHOD.md §3.1's split of every cell into two triangles
(:mod:`sfm_core.functional.lattice_cells` has both). A pixel no cell covers takes the value of
the nearest lattice point. ``rasterize`` finds indices and weights, ``gather`` applies them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sfm_core._checks import (
    check_nonempty_map,
    check_same_batch,
    check_same_device,
    check_size,
    check_tensor,
    compute_dtype,
)
from sfm_core.functional.lattice_cells import (
    DEFAULT_METHOD,
    TAPS,
    Locate,
    cells,
    check_method,
)
from sfm_core.functional.positions import check_positions

# Candidate (cell, pixel) pairs handled at once: bounds rasterize's memory for any mesh.
# Chunks that stay in cache are faster: rasterize took 0.11-0.13 s with 2**16-2**17, 0.35 s with
# 2**22 (CPU, one thread, 128x128 -> 512x512, batch 4, the inputs of benchmarks/bench_*).
_CANDIDATE_CHUNK = 1 << 17
# Target pixels per gather block (measured flat between 2**10 and 2**14).
_GATHER_BLOCK = 2048
# Positions are clamped to +-_FAR image sizes before rasterizing (no overflow in pixel units).
_FAR = float(2**20)


def rasterize(
    positions: torch.Tensor, size: tuple[int, int], *, method: str = DEFAULT_METHOD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target pixel: the source lattice indices and interpolation weights of its cell.

    Args:
        positions: ``[B, 2, h, w]`` normalized image positions (x, y) of the lattice points.
        size: target ``(Ho, Wo)``; target pixel ``(i, j)`` sits at ``((j + .5)/Wo, (i + .5)/Ho)``.
        method: ``"quads"`` (bilinear in the extended lattice's quads, 4 taps) or
            ``"triangles"`` (METHOD.md §3.1, barycentric, 3 taps); see
            :mod:`sfm_core.functional.lattice_cells`.

    Returns:
        ``index`` ``[B, Ho, Wo, T]`` (int64, flat ``h * w`` ids, always in ``[0, h * w)``) and
        ``weights`` ``[B, Ho, Wo, T]`` (float32, float64 for float64 positions; each row sums to
        1, ``T`` = 4 or 3 taps). A pixel no cell covers has weights ``(1, 0, ...)`` on its nearest
        lattice point. An image with a NaN or infinite position has no mesh: its indices are 0
        and its weights NaN, so :func:`gather` gives NaN for that image only. Batch 0 gives empty
        tensors. Not differentiable.
    """
    check_positions(positions)
    out_h, out_w = check_size("size", size)
    taps = TAPS[check_method(method)]
    batch, _, height, width = positions.shape
    device = positions.device
    # Rasterization decides containment, so it runs in float64 whatever the input precision.
    pos = positions.detach().to(torch.float64)
    broken = ~torch.isfinite(pos).flatten(1).all(dim=1)
    # Broken images are rasterized as a harmless lattice and overwritten below; far-out finite
    # points are pulled in to +-2**20 images, so pixel units cannot overflow float64.
    pos = torch.where(broken.view(-1, 1, 1, 1), 0.5, pos).clamp(-_FAR, _FAR)
    px, py = pos[:, 0] * out_w, pos[:, 1] * out_h  # target pixel units
    index = torch.zeros(batch * out_h * out_w, taps, dtype=torch.int64, device=device)
    weights = torch.zeros(batch * out_h * out_w, taps, dtype=torch.float64, device=device)
    covered = torch.zeros(batch * out_h * out_w, dtype=torch.bool, device=device)
    out_dtype = compute_dtype(positions.dtype)
    shape = (batch, out_h, out_w, taps)
    if batch == 0:
        return index.view(shape), weights.view(shape).to(out_dtype)
    if method == "quads" or (height > 1 and width > 1):
        cell_ids, cell_x, cell_y, locate = cells(method, px, py, (out_h, out_w))
        _fill_cells(cell_ids, cell_x, cell_y, locate, (out_h, out_w), index, weights, covered)
    _fill_nearest(px, py, (out_h, out_w), index, weights, covered)
    index, weights = index.view(shape), weights.view(shape)
    index.masked_fill_(broken.view(-1, 1, 1, 1), 0)
    weights.masked_fill_(broken.view(-1, 1, 1, 1), math.nan)
    return index, weights.to(out_dtype)


def _fill_cells(
    cell_ids: torch.Tensor,
    cell_x: torch.Tensor,
    cell_y: torch.Tensor,
    locate: Locate,
    target: tuple[int, int],
    index: torch.Tensor,
    weights: torch.Tensor,
    covered: torch.Tensor,
) -> None:
    """Write the indices/weights of every pixel centre inside a cell (lowest cell id wins).

    ``cell_ids``, ``cell_x``, ``cell_y``: ``[B, C, T]`` vertex ids and coordinates (pixels).
    """
    out_h, out_w = target
    batch, per_image, taps = cell_ids.shape
    # Pixel centres (k + 0.5) inside the bounding box, in index units.
    x_lo = torch.ceil(cell_x.amin(-1) - 0.5 - 1e-7).clamp(0, out_w).long()
    x_hi = torch.floor(cell_x.amax(-1) - 0.5 + 1e-7).clamp(-1, out_w - 1).long()
    y_lo = torch.ceil(cell_y.amin(-1) - 0.5 - 1e-7).clamp(0, out_h).long()
    y_hi = torch.floor(cell_y.amax(-1) - 0.5 + 1e-7).clamp(-1, out_h - 1).long()
    box_w = (x_hi - x_lo + 1).clamp_min(0)
    box_h = (y_hi - y_lo + 1).clamp_min(0)
    counts = (box_w * box_h).flatten()
    flat_ids = cell_ids.reshape(-1, taps)
    # Each vertex coordinate is gathered per candidate as its own 1-D column (index_select of
    # 1-D columns is several times faster than of rows on CPU).
    x_columns = [cell_x[..., k].flatten() for k in range(taps)]
    y_columns = [cell_y[..., k].flatten() for k in range(taps)]
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    image_start = torch.arange(batch, device=cell_x.device).repeat_interleave(per_image)
    first_pixel = image_start * (out_h * out_w) + y_lo.flatten() * out_w + x_lo.flatten()
    boxes = (x_lo.flatten(), y_lo.flatten(), box_w.flatten(), starts, first_pixel)
    never = torch.iinfo(torch.int64).max
    winner = torch.full_like(covered, never, dtype=torch.int64)
    cell_start, cell_total = 0, counts.numel()
    while cell_start < cell_total:
        # Whole cells per chunk, in increasing id, so "first writer wins" = "lowest id wins".
        budget = starts[cell_start] + _CANDIDATE_CHUNK
        cell_end = max(int(torch.searchsorted(ends, budget, right=True)), cell_start + 1)
        chunk = torch.arange(cell_start, cell_end, device=cell_x.device)
        cell = torch.repeat_interleave(chunk, counts[cell_start:cell_end])
        left, top, box_width, start, first = (column.index_select(0, cell) for column in boxes)
        offset = torch.arange(cell.numel(), device=cell_x.device) - (start - starts[cell_start])
        cell_start = cell_end
        line = torch.div(offset, box_width, rounding_mode="floor")
        col = left + offset - line * box_width
        pixel = first + offset + line * (out_w - box_width)
        qx = col.to(torch.float64) + 0.5
        qy = (top + line).to(torch.float64) + 0.5
        keep, parts = locate(
            [column.index_select(0, cell) for column in x_columns],
            [column.index_select(0, cell) for column in y_columns],
            qx,
            qy,
        )
        kept = (keep & ~covered.index_select(0, pixel)).nonzero().squeeze(1)
        kept_cell, kept_pixel = cell.index_select(0, kept), pixel.index_select(0, kept)
        winner.scatter_reduce_(0, kept_pixel, kept_cell, reduce="amin")
        is_winner = winner.index_select(0, kept_pixel) == kept_cell
        winner.index_fill_(0, kept_pixel, never)  # reset only what this chunk touched
        won = kept.index_select(0, is_winner.nonzero().squeeze(1))
        pixel = pixel.index_select(0, won)
        index.index_copy_(0, pixel, flat_ids.index_select(0, cell.index_select(0, won)))
        weights.index_copy_(
            0, pixel, torch.stack([part.index_select(0, won) for part in parts], -1)
        )
        covered.index_fill_(0, pixel, 1)  # an int: jit.trace has no index_fill_ with a bool value


def _fill_nearest(
    px: torch.Tensor,
    py: torch.Tensor,
    target: tuple[int, int],
    index: torch.Tensor,
    weights: torch.Tensor,
    covered: torch.Tensor,
) -> None:
    """Give every still uncovered pixel the value of its nearest lattice point (lowest id on ties).

    Exact without comparing every pixel with every point: a few likely points give each pixel an
    upper bound ``r`` on its nearest distance, and only the points whose x lies within ``r`` of
    the pixel's (a sorted search) are compared.
    """
    out_h, out_w = target
    pixels = out_h * out_w
    for image, (image_x, image_y) in enumerate(zip(px.flatten(1), py.flatten(1), strict=True)):
        missing = (~covered[image * pixels : (image + 1) * pixels]).nonzero().squeeze(1)
        if missing.numel() == 0:
            continue
        qx = (missing % out_w).to(torch.float64) + 0.5
        qy = torch.div(missing, out_w, rounding_mode="floor").to(torch.float64) + 0.5
        likely = _likely_points(qx / out_w, qy / out_h, px.shape[1], px.shape[2])
        likely_x = image_x.index_select(0, likely.flatten()).view(likely.shape)
        likely_y = image_y.index_select(0, likely.flatten()).view(likely.shape)
        bound = (
            (likely_x - qx.unsqueeze(-1)).square() + (likely_y - qy.unsqueeze(-1)).square()
        ).amin(-1)
        # Slack so that rounding never leaves out the nearest point or a point tied with it.
        reach = bound.sqrt() * (1 + 1e-9) + 1e-9
        nearest = _nearest_within_reach(image_x, image_y, qx, qy, reach)
        flat = missing + image * pixels
        index[flat] = nearest.unsqueeze(-1).expand(-1, index.shape[1])
        weights[flat] = F.one_hot(torch.zeros_like(nearest), index.shape[1]).to(weights.dtype)


def _likely_points(u: torch.Tensor, v: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flat ids ``[M, 9 + S]`` of points likely near each normalized position ``(u, v)``.

    The 3x3 neighbourhood of the point an unwarped lattice puts there (tight for ARS warps,
    which move points a few pixels), plus an up to 8 x 8 subset spread over the whole lattice
    (a bound for any positions). Only the bound's tightness depends on them, not the result.
    """
    device = u.device
    row = (v * height).floor().long().clamp(0, height - 1).unsqueeze(-1)
    col = (u * width).floor().long().clamp(0, width - 1).unsqueeze(-1)
    step = torch.tensor([-1, 0, 1], device=device)
    rows = (row + step.repeat_interleave(3)).clamp(0, height - 1)
    cols = (col + step.repeat(3)).clamp(0, width - 1)
    spread_rows = torch.linspace(0, height - 1, min(height, 8), device=device).round().long()
    spread_cols = torch.linspace(0, width - 1, min(width, 8), device=device).round().long()
    spread = (spread_rows.unsqueeze(-1) * width + spread_cols).flatten()
    return torch.cat([rows * width + cols, spread.expand(u.numel(), -1)], -1)


def _nearest_within_reach(
    x: torch.Tensor, y: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, reach: torch.Tensor
) -> torch.Tensor:
    """Id of each query's nearest point (lowest id on ties), among points with |x - qx| <= reach."""
    sorted_x, order = x.sort()
    lo = torch.searchsorted(sorted_x, qx - reach)
    counts = torch.searchsorted(sorted_x, qx + reach, right=True) - lo
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    nearest = torch.empty_like(lo)
    query_start, query_total = 0, qx.numel()
    while query_start < query_total:
        budget = starts[query_start] + _CANDIDATE_CHUNK
        query_end = max(int(torch.searchsorted(ends, budget, right=True)), query_start + 1)
        chunk = torch.arange(query_start, query_end, device=qx.device)
        query = torch.repeat_interleave(chunk, counts[query_start:query_end])
        offset = torch.arange(query.numel(), device=qx.device) - (
            starts.index_select(0, query) - starts[query_start]
        )
        point = order.index_select(0, lo.index_select(0, query) + offset)
        slot = query - query_start
        distance = (x.index_select(0, point) - qx.index_select(0, query)).square() + (
            y.index_select(0, point) - qy.index_select(0, query)
        ).square()
        best = torch.full((chunk.numel(),), math.inf, dtype=distance.dtype, device=qx.device)
        best.scatter_reduce_(0, slot, distance, reduce="amin")
        tied = (distance == best.index_select(0, slot)).nonzero().squeeze(1)
        first = torch.full_like(chunk, torch.iinfo(torch.int64).max)
        first.scatter_reduce_(
            0, slot.index_select(0, tied), point.index_select(0, tied), reduce="amin"
        )
        nearest[chunk] = first
        query_start = query_end
    return nearest


def gather(z: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``y(k, p) = sum_t weights(p, t) * z(k, index(p, t))``: ``[B, K, h, w] -> [B, K, Ho, Wo]``.

    ``index`` and ``weights`` are ``[B, Ho, Wo, T]`` for any number of taps ``T >= 1`` (4 from
    the quads of :func:`rasterize`, 3 from its triangles). Differentiable in ``z`` and ``weights`` (first order: the embedding bag it runs on has no
    double backward); computed in at least float32, returned in ``z.dtype``. ``B``, ``K``,
    ``Ho`` or ``Wo`` of 0 give an empty result; ``z`` needs ``h, w >= 1``.
    """
    check_tensor("z", z, ndim=4, shape_hint="[B, K, h, w]")
    check_nonempty_map("z", z, "([B, K, h, w])")
    check_tensor("index", index, ndim=4, floating=False, shape_hint="[B, Ho, Wo, T]")
    check_tensor("weights", weights, ndim=4, shape_hint="[B, Ho, Wo, T]")
    check_same_device(z=z, index=index, weights=weights)
    check_same_batch(z=z, index=index, weights=weights)
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be int32 or int64, got {index.dtype}")
    if index.shape != weights.shape or index.shape[-1] < 1:
        raise ValueError(
            f"index and weights must both be [B, Ho, Wo, T] with T >= 1 taps, got "
            f"{tuple(index.shape)} and {tuple(weights.shape)}"
        )
    sources = z.shape[2] * z.shape[3]
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= sources):
        raise ValueError(f"index must lie in [0, h*w) = [0, {sources}), got values outside it")
    batch, channels, height, width = z.shape
    out_h, out_w = index.shape[1:3]
    pixels = out_h * out_w
    dtype = compute_dtype(torch.promote_types(z.dtype, weights.dtype))
    if pixels == 0 or batch == 0 or channels == 0:
        # Through the graph, so that an empty result still has a gradient path to z and weights.
        empty = z.new_zeros(batch, channels, out_h, out_w)
        return empty + 0 * (z.sum() + weights.to(z.dtype).sum())
    taps = index.shape[3]
    # A weighted bag of T rows of a channels-last table per pixel; done in blocks of pixels so
    # that turning each block back to channels-first is a cache-sized copy (2x faster on CPU
    # than T channel-first torch.gather calls; the sums are the same, in the same order).
    table = z.to(dtype).flatten(2).transpose(1, 2).reshape(batch * height * width, channels)
    offsets = torch.arange(batch, device=z.device).view(batch, 1, 1) * (height * width)
    rows = (index.long().flatten(1, 2) + offsets).view(batch, pixels, taps)
    bag_weights = weights.to(dtype).flatten(1, 2)
    blocks = [
        F.embedding_bag(
            rows[:, start : start + _GATHER_BLOCK].reshape(-1, taps),
            table,
            per_sample_weights=bag_weights[:, start : start + _GATHER_BLOCK].reshape(-1, taps),
            mode="sum",
        )
        .view(batch, -1, channels)
        .transpose(1, 2)
        for start in range(0, pixels, _GATHER_BLOCK)
    ]
    return torch.cat(blocks, 2).view(batch, channels, out_h, out_w).to(z.dtype)


def nonuniform_upsample(
    z: torch.Tensor,
    positions: torch.Tensor,
    size: tuple[int, int],
    *,
    method: str = DEFAULT_METHOD,
) -> torch.Tensor:
    """Demodulate ``z`` ``[B, K, h, w]`` sampled at ``positions`` ``[B, 2, h, w]`` onto ``size``.

    ``method="quads"`` (default): bilinear within the lattice quads, the hull extended to the
    target's edge pixel centres, so that a uniform lattice gives exactly
    ``F.interpolate(z, size, mode="bilinear", align_corners=False)``; ``"triangles"``: the
    piecewise-linear interpolation on the lattice triangles of METHOD.md §3.1. Gradient flows to
    ``z`` only. Batch 0 or ``K`` = 0 give an empty ``[B, K, *size]``; ``h, w`` must be at least 1.
    An image with a non-finite position comes out all NaN; the other images are unaffected.
    """
    check_tensor("z", z, ndim=4, shape_hint="[B, K, h, w]")
    check_positions(positions)
    check_method(method)
    check_same_device(z=z, positions=positions)
    check_same_batch(z=z, positions=positions)
    if positions.shape[-2:] != z.shape[-2:]:
        raise ValueError(
            f"positions and z must share h, w, got positions {tuple(positions.shape)} and "
            f"z {tuple(z.shape)}"
        )
    index, weights = rasterize(positions, size, method=method)
    return gather(z, index, weights)
