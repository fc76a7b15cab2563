"""The cells non-uniform upsampling interpolates in, and where in a cell a pixel centre lies.

Two methods, named by ``method=`` of :func:`~sfm_core.functional.rasterize`:

* ``"quads"`` (default): bilinear interpolation within the lattice quads, as the authors' inverse
  warp. A target pixel centre inside quad ``(i, j)...(i+1, j+1)`` takes the bilinear weights of
  the ``(s, t)`` in ``[0, 1]^2`` that the quad's bilinear map sends to it (the map inverted in
  closed form), on 4 taps ``(i, j), (i, j+1), (i+1, j), (i+1, j+1)`` with weights
  ``(1-s)(1-t), s(1-t), (1-s)t, st``. The lattice is first *extended* so that its hull reaches
  the target's edge pixel centres: a ring of virtual points, one beyond each edge point, replicates
  the edge point's value and position, except that its coordinate across the edge is pushed out
  to the edge pixel-centre line (left ring ``x = min(x, 0.5)``, right ``x = max(x, Wo - 0.5)``,
  top ``y = min(y, 0.5)``, bottom ``y = max(y, Ho - 0.5)``, in target pixels; corners both).
  A ring cell is then a trapezoid between the lattice's edge and that line, on which the value
  only varies along the edge. On a uniform lattice (pixel centres) this is exactly bilinear
  resizing with ``align_corners=False`` and its border clamp; it reproduces values linear in
  position inside the lattice hull.
* ``"triangles"`` (METHOD.md §3.1): each lattice cell split along its shorter diagonal (in target
  pixels) into two triangles, barycentric weights on 3 taps, no ring. Not bilinear on a uniform
  lattice (every cell is split along the same diagonal).

Each method gives its cells as vertex ids (flat lattice ids) and vertex coordinates (target pixel
units, float64), plus a ``locate`` that says which candidate pixel centres a cell covers and their
weights. A pixel centre on an edge shared by two cells is covered by both (a small tolerance);
the caller lets the lowest cell id win.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

METHODS = ("quads", "triangles")
DEFAULT_METHOD = "quads"
TAPS = {"quads": 4, "triangles": 3}
# Barycentric slack (float64): a pixel centre on a shared edge must land in at least one cell.
INSIDE_TOL = 1e-9
# Twice the area (pixels^2) below which a triangle is degenerate and covers nothing.
MIN_DET = 1e-12

Columns = Sequence[torch.Tensor]
Locate = Callable[
    [Columns, Columns, torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]
]


def check_method(method: object) -> str:
    """Return ``method`` if it names a method of non-uniform upsampling, else raise."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    return method


def cells(
    method: str, px: torch.Tensor, py: torch.Tensor, target: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Locate]:
    """Vertex ids ``[B, C, T]``, vertex x and y ``[B, C, T]`` and ``locate`` of the cells.

    ``px``, ``py``: ``[B, h, w]`` float64 lattice points in target pixel units.
    """
    if method == "quads":
        ids, x, y = _quads(px, py, target)
        return ids, x, y, locate_in_quad
    ids, x, y = _triangles(px, py)
    return ids, x, y, locate_in_triangle


def _triangles(
    px: torch.Tensor, py: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The lattice triangles, each cell split on its shorter diagonal (tie: a-d)."""
    batch, height, width = px.shape
    ids = torch.arange(height * width, device=px.device).view(height, width)
    a, b = ids[:-1, :-1].reshape(-1), ids[:-1, 1:].reshape(-1)
    c, d = ids[1:, :-1].reshape(-1), ids[1:, 1:].reshape(-1)
    flat_x, flat_y = px.flatten(1), py.flatten(1)

    def squared_length(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (flat_x[:, p] - flat_x[:, q]).square() + (flat_y[:, p] - flat_y[:, q]).square()

    split_ad = (squared_length(a, d) <= squared_length(b, c)).unsqueeze(-1)  # [B, cells, 1]
    along_ad = torch.stack([torch.stack([a, b, d], -1), torch.stack([a, d, c], -1)], 1)
    along_bc = torch.stack([torch.stack([a, b, c], -1), torch.stack([b, d, c], -1)], 1)
    chosen = torch.where(split_ad.unsqueeze(-1), along_ad.unsqueeze(0), along_bc.unsqueeze(0))
    tris = chosen.reshape(batch, 2 * a.numel(), 3)
    tx = torch.gather(flat_x, 1, tris.flatten(1)).view(tris.shape)
    ty = torch.gather(flat_y, 1, tris.flatten(1)).view(tris.shape)
    return tris, tx, ty


def extended_lattice(
    px: torch.Tensor, py: torch.Tensor, target: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids ``[h+2, w+2]`` and points ``[B, h+2, w+2]`` of the lattice with its virtual ring.

    A ring point repeats its edge neighbour (id and position), pushed out across the edge to the
    target's edge pixel-centre line where the lattice does not already reach beyond it.
    """
    out_h, out_w = target
    height, width = px.shape[1:]
    rows = torch.arange(-1, height + 1, device=px.device).clamp(0, height - 1)
    cols = torch.arange(-1, width + 1, device=px.device).clamp(0, width - 1)
    ids = rows.view(-1, 1) * width + cols
    x = px.index_select(1, rows).index_select(2, cols)
    y = py.index_select(1, rows).index_select(2, cols)
    x = torch.cat([x[..., :1].clamp(max=0.5), x[..., 1:-1], x[..., -1:].clamp(min=out_w - 0.5)], -1)
    y = torch.cat([y[:, :1].clamp(max=0.5), y[:, 1:-1], y[:, -1:].clamp(min=out_h - 0.5)], 1)
    return ids, x, y


def _quads(px: torch.Tensor, py: torch.Tensor, target: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The quads of the extended lattice, row-major; vertices (i,j), (i,j+1), (i+1,j), (i+1,j+1)."""
    ids, x, y = extended_lattice(px, py, target)

    def corners(grid: torch.Tensor) -> torch.Tensor:
        parts = (grid[..., :-1, :-1], grid[..., :-1, 1:], grid[..., 1:, :-1], grid[..., 1:, 1:])
        return torch.stack(parts, -1).flatten(-3, -2)

    quad_ids = corners(ids).unsqueeze(0).expand(px.shape[0], -1, -1)
    return quad_ids, corners(x), corners(y)


def _barycentric(
    x0: torch.Tensor,
    y0: torch.Tensor,
    x1: torch.Tensor,
    y1: torch.Tensor,
    x2: torch.Tensor,
    y2: torch.Tensor,
    qx: torch.Tensor,
    qy: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whether ``(qx, qy)`` lies in the (non-degenerate) triangle, and its barycentric weights."""
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    proper = det.abs() > MIN_DET
    det = torch.where(proper, det, torch.ones_like(det))
    dx, dy = qx - x2, qy - y2
    l0 = ((y1 - y2) * dx + (x2 - x1) * dy) / det
    l1 = ((y2 - y0) * dx + (x0 - x2) * dy) / det
    l2 = 1.0 - l0 - l1
    inside = proper & (l0 >= -INSIDE_TOL) & (l1 >= -INSIDE_TOL) & (l2 >= -INSIDE_TOL)
    return inside, l0, l1, l2


def locate_in_triangle(
    x: Columns, y: Columns, qx: torch.Tensor, qy: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Containment and barycentric weights (clamped to >= 0, renormalized)."""
    inside, *bary = _barycentric(x[0], y[0], x[1], y[1], x[2], y[2], qx, qy)
    clamped = [part.clamp_min(0.0) for part in bary]
    total = clamped[0] + clamped[1] + clamped[2]
    return inside, [part / total for part in clamped]


def _cross(ux: torch.Tensor, uy: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor) -> torch.Tensor:
    return ux * vy - uy * vx


def locate_in_quad(
    x: Columns, y: Columns, qx: torch.Tensor, qy: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Containment and inverse-bilinear weights for quad vertices a, b, c, d = x/y[0..3].

    Containment: the quad is the union of the two triangles on its interior diagonal (a-d unless
    b and c lie on the same side of it, i.e. a non-convex quad with its reflex vertex at b or c),
    so convex and non-convex quads alike cover exactly their area. Weights: with ``e = b - a``,
    ``f = c - a``, ``g = d - c - e``, ``h = q - a``, the bilinear map ``h = s e + t f + s t g``
    gives ``k2 t^2 + k1 t + k0 = 0`` (``k2 = g x f``, ``k1 = e x f + h x g``, ``k0 = h x e``),
    solved by the cancellation-free pair of roots; each root's ``s`` is the least-squares
    solution of ``h - t f = s (e + t g)``, and the root whose ``(s, t)`` lies closest to
    ``[0, 1]^2`` wins (the first on ties). A parallelogram (``k2 = 0``) keeps the linear root;
    a collapsed edge (``e + t g = 0``) takes ``s = 1/2``. Finally ``s, t`` are clamped to
    ``[0, 1]``: never NaN for finite vertices.
    """
    ax, bx, cx, dx = x
    ay, by, cy, dy = y
    side_b = _cross(dx - ax, dy - ay, bx - ax, by - ay)
    side_c = _cross(dx - ax, dy - ay, cx - ax, cy - ay)
    split_ad = side_b * side_c < 0
    in_abd = _barycentric(ax, ay, bx, by, dx, dy, qx, qy)[0]
    in_adc = _barycentric(ax, ay, dx, dy, cx, cy, qx, qy)[0]
    in_abc = _barycentric(ax, ay, bx, by, cx, cy, qx, qy)[0]
    in_bdc = _barycentric(bx, by, dx, dy, cx, cy, qx, qy)[0]
    inside = torch.where(split_ad, in_abd | in_adc, in_abc | in_bdc)

    ex, ey = bx - ax, by - ay
    fx, fy = cx - ax, cy - ay
    gx, gy = (dx - cx) - ex, (dy - cy) - ey
    hx, hy = qx - ax, qy - ay
    k2 = _cross(gx, gy, fx, fy)
    k1 = _cross(ex, ey, fx, fy) + _cross(hx, hy, gx, gy)
    k0 = _cross(hx, hy, ex, ey)
    root = (k1.square() - 4.0 * k2 * k0).clamp_min(0.0).sqrt()
    half = -0.5 * (k1 + torch.where(k1 < 0, -root, root))
    # Roots off [0, 1] only need to lose the comparison: bounded, so that nothing overflows.
    far = torch.full_like(k1, 5.0)
    t_small = torch.where(half != 0, k0 / torch.where(half != 0, half, 1.0), far)
    t_small = torch.where(half.eq(0) & k2.eq(0), torch.full_like(k1, 0.5), t_small)
    t_large = torch.where(k2 != 0, half / torch.where(k2 != 0, k2, 1.0), far)

    def s_of(t: torch.Tensor) -> torch.Tensor:
        ux, uy = ex + t * gx, ey + t * gy
        norm = ux.square() + uy.square()
        s = ((hx - t * fx) * ux + (hy - t * fy) * uy) / torch.where(norm > 0, norm, 1.0)
        return torch.where(norm > 0, s, torch.full_like(s, 0.5)).nan_to_num(0.5, 5.0, -4.0)

    def outside(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([-s, s - 1, -t, t - 1]).amax(0).clamp_min(0.0)

    t_small = t_small.nan_to_num(0.5, 5.0, -4.0).clamp(-4.0, 5.0)
    t_large = t_large.nan_to_num(0.5, 5.0, -4.0).clamp(-4.0, 5.0)
    s_small, s_large = s_of(t_small), s_of(t_large)
    take_small = outside(s_small, t_small) <= outside(s_large, t_large)
    s = torch.where(take_small, s_small, s_large).clamp(0.0, 1.0)
    t = torch.where(take_small, t_small, t_large).clamp(0.0, 1.0)
    return inside, [(1 - s) * (1 - t), s * (1 - t), (1 - s) * t, s * t]
