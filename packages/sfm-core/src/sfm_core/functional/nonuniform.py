"""Non-uniform upsampling: demodulation of a warped lattice onto the uniform grid (SPEC 3.1).

Each lattice cell is split along its shorter diagonal (in target pixels) into two triangles;
every target pixel centre takes the barycentric blend of the triangle that contains it (the
lowest triangle id wins on shared edges), and a pixel no triangle covers takes the value of the
nearest lattice point. ``rasterize`` finds indices and weights, ``gather`` applies them.
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
from sfm_core.functional.positions import check_positions

VERTICES = 3
# Candidate (triangle, pixel) pairs handled at once: bounds rasterize's memory for any mesh.
# Chunks that stay in cache are faster: rasterize took 0.11-0.13 s with 2**16-2**17, 0.35 s with
# 2**22 (CPU, one thread, 128x128 -> 512x512, batch 4, the inputs of benchmarks/bench_*).
_CANDIDATE_CHUNK = 1 << 17
# Target pixels per gather block (measured flat between 2**10 and 2**14).
_GATHER_BLOCK = 2048
# Barycentric slack (float64): a pixel centre on a shared edge must land in at least one triangle.
_INSIDE_TOL = 1e-9
# Positions are clamped to +-_FAR image sizes before rasterizing (no overflow in pixel units).
_FAR = float(2**20)


def _triangles(height: int, width: int, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Vertex ids ``[B, 2 (h-1)(w-1), 3]`` of the lattice triangles, split on the shorter diagonal."""
    device = px.device
    ids = torch.arange(height * width, device=device).view(height, width)
    a, b = ids[:-1, :-1].reshape(-1), ids[:-1, 1:].reshape(-1)
    c, d = ids[1:, :-1].reshape(-1), ids[1:, 1:].reshape(-1)
    flat_x, flat_y = px.flatten(1), py.flatten(1)

    def squared_length(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (flat_x[:, p] - flat_x[:, q]).square() + (flat_y[:, p] - flat_y[:, q]).square()

    split_ad = (squared_length(a, d) <= squared_length(b, c)).unsqueeze(-1)  # [B, cells, 1]
    along_ad = torch.stack([torch.stack([a, b, d], -1), torch.stack([a, d, c], -1)], 1)
    along_bc = torch.stack([torch.stack([a, b, c], -1), torch.stack([b, d, c], -1)], 1)
    cells = a.numel()
    chosen = torch.where(split_ad.unsqueeze(-1), along_ad.unsqueeze(0), along_bc.unsqueeze(0))
    return chosen.reshape(px.shape[0], 2 * cells, VERTICES)


def rasterize(positions: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target pixel: the 3 source lattice indices and barycentric weights.

    Args:
        positions: ``[B, 2, h, w]`` normalized image positions (x, y) of the lattice points.
        size: target ``(Ho, Wo)``; target pixel ``(i, j)`` sits at ``((j + .5)/Wo, (i + .5)/Ho)``.

    Returns:
        ``index`` ``[B, Ho, Wo, 3]`` (int64, flat ``h * w`` ids, always in ``[0, h * w)``) and
        ``weights`` ``[B, Ho, Wo, 3]`` (float32, float64 for float64 positions; each row sums to
        1). An image with a NaN or infinite position has no mesh: its indices are 0 and its
        weights NaN, so :func:`gather` gives NaN for that image only. Batch 0 gives empty
        tensors. Not differentiable.
    """
    check_positions(positions)
    out_h, out_w = check_size("size", size)
    batch, _, height, width = positions.shape
    device = positions.device
    # Rasterization decides containment, so it runs in float64 whatever the input precision.
    pos = positions.detach().to(torch.float64)
    broken = ~torch.isfinite(pos).flatten(1).all(dim=1)
    # Broken images are rasterized as a harmless lattice and overwritten below; far-out finite
    # points are pulled in to +-2**20 images, so pixel units cannot overflow float64.
    pos = torch.where(broken.view(-1, 1, 1, 1), 0.5, pos).clamp(-_FAR, _FAR)
    px, py = pos[:, 0] * out_w, pos[:, 1] * out_h  # target pixel units
    index = torch.zeros(batch * out_h * out_w, VERTICES, dtype=torch.int64, device=device)
    weights = torch.zeros(batch * out_h * out_w, VERTICES, dtype=torch.float64, device=device)
    covered = torch.zeros(batch * out_h * out_w, dtype=torch.bool, device=device)
    if batch == 0:
        return index.view(batch, out_h, out_w, VERTICES), weights.view(
            batch, out_h, out_w, VERTICES
        ).to(compute_dtype(positions.dtype))
    if height > 1 and width > 1:
        _fill_triangles(px, py, (height, width), (out_h, out_w), index, weights, covered)
    _fill_nearest(px, py, (out_h, out_w), index, weights, covered)
    out_dtype = compute_dtype(positions.dtype)
    shape = (batch, out_h, out_w, VERTICES)
    index, weights = index.view(shape), weights.view(shape)
    index.masked_fill_(broken.view(-1, 1, 1, 1), 0)
    weights.masked_fill_(broken.view(-1, 1, 1, 1), math.nan)
    return index, weights.to(out_dtype)


def _fill_triangles(
    px: torch.Tensor,
    py: torch.Tensor,
    lattice: tuple[int, int],
    target: tuple[int, int],
    index: torch.Tensor,
    weights: torch.Tensor,
    covered: torch.Tensor,
) -> None:
    """Write barycentric indices/weights of every pixel centre inside a lattice triangle."""
    out_h, out_w = target
    tris = _triangles(*lattice, px, py)  # [B, T, 3]
    per_image = tris.shape[1]
    flat_x, flat_y = px.flatten(1), py.flatten(1)
    tx = torch.gather(flat_x, 1, tris.flatten(1)).view(tris.shape)
    ty = torch.gather(flat_y, 1, tris.flatten(1)).view(tris.shape)
    # Pixel centres (k + 0.5) inside the bounding box, in index units.
    x_lo = torch.ceil(tx.amin(-1) - 0.5 - 1e-7).clamp(0, out_w).long()
    x_hi = torch.floor(tx.amax(-1) - 0.5 + 1e-7).clamp(-1, out_w - 1).long()
    y_lo = torch.ceil(ty.amin(-1) - 0.5 - 1e-7).clamp(0, out_h).long()
    y_hi = torch.floor(ty.amax(-1) - 0.5 + 1e-7).clamp(-1, out_h - 1).long()
    box_w = (x_hi - x_lo + 1).clamp_min(0)
    box_h = (y_hi - y_lo + 1).clamp_min(0)
    det = (ty[..., 1] - ty[..., 2]) * (tx[..., 0] - tx[..., 2]) + (tx[..., 2] - tx[..., 1]) * (
        ty[..., 0] - ty[..., 2]
    )
    counts = torch.where(det.abs() > 1e-12, box_w * box_h, torch.zeros_like(box_w)).flatten()
    flat_tris = tris.flatten(0, 1)
    tx, ty = tx.flatten(0, 1), ty.flatten(0, 1)
    # Per triangle, the terms of its barycentric formula, each gathered per candidate as its own
    # 1-D column (index_select of 1-D columns is several times faster than of rows on CPU).
    terms = (
        tx[:, 2],
        ty[:, 2],
        ty[:, 1] - ty[:, 2],
        tx[:, 2] - tx[:, 1],
        ty[:, 2] - ty[:, 0],
        tx[:, 0] - tx[:, 2],
        det.flatten(),
    )
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    image_start = torch.arange(px.shape[0], device=px.device).repeat_interleave(per_image)
    first_pixel = image_start * (out_h * out_w) + y_lo.flatten() * out_w + x_lo.flatten()
    boxes = (x_lo.flatten(), y_lo.flatten(), box_w.flatten(), starts, first_pixel)
    never = torch.iinfo(torch.int64).max
    winner = torch.full_like(covered, never, dtype=torch.int64)
    tri_start, tri_total = 0, counts.numel()
    while tri_start < tri_total:
        # Whole triangles per chunk, in increasing id, so "first writer wins" = "lowest id wins".
        budget = starts[tri_start] + _CANDIDATE_CHUNK
        tri_end = max(int(torch.searchsorted(ends, budget, right=True)), tri_start + 1)
        chunk = torch.arange(tri_start, tri_end, device=px.device)
        tri = torch.repeat_interleave(chunk, counts[tri_start:tri_end])
        left, top, box_width, start, first = (column.index_select(0, tri) for column in boxes)
        offset = torch.arange(tri.numel(), device=px.device) - (start - starts[tri_start])
        tri_start = tri_end
        line = torch.div(offset, box_width, rounding_mode="floor")
        col = left + offset - line * box_width
        pixel = first + offset + line * (out_w - box_width)
        x2, y2, a0, b0, a1, b1, d = (term.index_select(0, tri) for term in terms)
        dx = col.to(torch.float64) + 0.5 - x2
        dy = (top + line).to(torch.float64) + 0.5 - y2
        l0 = (a0 * dx + b0 * dy) / d
        l1 = (a1 * dx + b1 * dy) / d
        l2 = 1.0 - l0 - l1
        keep = (l0 >= -_INSIDE_TOL) & (l1 >= -_INSIDE_TOL) & (l2 >= -_INSIDE_TOL)
        kept = (keep & ~covered.index_select(0, pixel)).nonzero().squeeze(1)
        kept_tri, kept_pixel = tri.index_select(0, kept), pixel.index_select(0, kept)
        winner.scatter_reduce_(0, kept_pixel, kept_tri, reduce="amin")
        is_winner = winner.index_select(0, kept_pixel) == kept_tri
        winner.index_fill_(0, kept_pixel, never)  # reset only what this chunk touched
        won = kept.index_select(0, is_winner.nonzero().squeeze(1))
        pixel = pixel.index_select(0, won)
        bary = torch.stack([part.index_select(0, won).clamp_min(0.0) for part in (l0, l1, l2)], -1)
        index.index_copy_(0, pixel, flat_tris.index_select(0, tri.index_select(0, won)))
        weights.index_copy_(0, pixel, bary / (bary[:, 0] + bary[:, 1] + bary[:, 2]).unsqueeze(-1))
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
        index[flat] = nearest.unsqueeze(-1).expand(-1, VERTICES)
        weights[flat] = torch.tensor([1.0, 0.0, 0.0], dtype=weights.dtype, device=weights.device)


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

    Differentiable in ``z`` and ``weights`` (first order: the embedding bag it runs on has no
    double backward); computed in at least float32, returned in ``z.dtype``. ``B``, ``K``,
    ``Ho`` or ``Wo`` of 0 give an empty result; ``z`` needs ``h, w >= 1``.
    """
    check_tensor("z", z, ndim=4, shape_hint="[B, K, h, w]")
    check_nonempty_map("z", z, "([B, K, h, w])")
    check_tensor("index", index, ndim=4, floating=False, shape_hint="[B, Ho, Wo, 3]")
    check_tensor("weights", weights, ndim=4, shape_hint="[B, Ho, Wo, 3]")
    check_same_device(z=z, index=index, weights=weights)
    check_same_batch(z=z, index=index, weights=weights)
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be int32 or int64, got {index.dtype}")
    if index.shape != weights.shape or index.shape[-1] != VERTICES:
        raise ValueError(
            f"index and weights must both be [B, Ho, Wo, 3], got {tuple(index.shape)} and "
            f"{tuple(weights.shape)}"
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
    # A weighted bag of 3 rows of a channels-last table per pixel; done in blocks of pixels so
    # that turning each block back to channels-first is a cache-sized copy (2x faster on CPU
    # than three channel-first torch.gather calls; the sums are the same, in the same order).
    table = z.to(dtype).flatten(2).transpose(1, 2).reshape(batch * height * width, channels)
    offsets = torch.arange(batch, device=z.device).view(batch, 1, 1) * (height * width)
    rows = (index.long().flatten(1, 2) + offsets).view(batch, pixels, VERTICES)
    bag_weights = weights.to(dtype).flatten(1, 2)
    blocks = [
        F.embedding_bag(
            rows[:, start : start + _GATHER_BLOCK].reshape(-1, VERTICES),
            table,
            per_sample_weights=bag_weights[:, start : start + _GATHER_BLOCK].reshape(-1, VERTICES),
            mode="sum",
        )
        .view(batch, -1, channels)
        .transpose(1, 2)
        for start in range(0, pixels, _GATHER_BLOCK)
    ]
    return torch.cat(blocks, 2).view(batch, channels, out_h, out_w).to(z.dtype)


def nonuniform_upsample(
    z: torch.Tensor, positions: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Demodulate ``z`` ``[B, K, h, w]`` sampled at ``positions`` ``[B, 2, h, w]`` onto ``size``.

    Piecewise-linear interpolation on the lattice's own triangles; gradient flows to ``z`` only.
    Batch 0 or ``K`` = 0 give an empty ``[B, K, *size]``; ``h, w`` must be at least 1. An image
    with a non-finite position comes out all NaN; the other images are unaffected.
    """
    check_tensor("z", z, ndim=4, shape_hint="[B, K, h, w]")
    check_positions(positions)
    check_same_device(z=z, positions=positions)
    check_same_batch(z=z, positions=positions)
    if positions.shape[-2:] != z.shape[-2:]:
        raise ValueError(
            f"positions and z must share h, w, got positions {tuple(positions.shape)} and "
            f"z {tuple(z.shape)}"
        )
    index, weights = rasterize(positions, size)
    return gather(z, index, weights)
