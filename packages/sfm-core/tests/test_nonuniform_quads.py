"""The default non-uniform upsampling (``method="quads"``): bilinear in the extended lattice's quads.

Pinned: exactly ``F.interpolate(..., mode="bilinear", align_corners=False)`` on a uniform lattice
(interior and border), every pixel covered on realistic warps, exact on linear functions inside
awkward quads, and never NaN on degenerate lattices.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfm_core.functional import identity_positions, nonuniform_upsample, rasterize
from sfm_core.functional.lattice_cells import cells, extended_lattice, locate_in_quad
from sfm_core.functional.nonuniform import _fill_cells

from .conftest import warped_positions

SIZES = [
    ((4, 4), (16, 16)),  # integer ratio: pixel centres on lattice lines (shared-edge ties)
    ((5, 7), (13, 11)),  # odd, non-integer ratios
    ((6, 7), (6, 7)),  # same size
    ((7, 5), (29, 17)),
    ((1, 5), (3, 10)),  # h = 1
    ((5, 1), (7, 3)),  # w = 1
    ((1, 1), (4, 5)),
    ((1, 6), (1, 6)),
    ((9, 12), (4, 5)),  # downsampling
    ((3, 4), (1, 1)),
    ((8, 8), (3, 9)),
    ((16, 16), (32, 32)),
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(("lattice", "size"), SIZES)
def test_uniform_lattice_is_exactly_bilinear_resizing(
    lattice: tuple[int, int], size: tuple[int, int], batch: int
) -> None:
    z = torch.randn(batch, 3, *lattice, dtype=torch.float64)
    positions = identity_positions(batch, *lattice, dtype=torch.float64)
    expected = F.interpolate(z, size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        nonuniform_upsample(z, positions, size), expected, rtol=0, atol=1e-12
    )


def test_uniform_lattice_in_float32_is_bilinear_to_float_rounding() -> None:
    z = torch.randn(2, 8, 16, 24)
    positions = identity_positions(2, 16, 24, dtype=torch.float32)
    expected = F.interpolate(z, (61, 97), mode="bilinear", align_corners=False)
    torch.testing.assert_close(nonuniform_upsample(z, positions, (61, 97)), expected)


def test_triangles_are_not_bilinear_on_a_uniform_lattice() -> None:
    # The reason quads are the default: the same white noise, 16 -> 32, differs by ~44 %.
    z = torch.randn(1, 8, 16, 16, dtype=torch.float64)
    positions = identity_positions(1, 16, 16, dtype=torch.float64)
    bilinear = F.interpolate(z, (32, 32), mode="bilinear", align_corners=False)
    triangles = nonuniform_upsample(z, positions, (32, 32), method="triangles")
    quads = nonuniform_upsample(z, positions, (32, 32))
    assert (triangles - bilinear).norm() / bilinear.norm() > 0.3
    assert (quads - bilinear).norm() / bilinear.norm() < 1e-14


def coverage(positions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Which target pixels a quad covers (``[B, Ho, Wo]``): the rest take the nearest fallback."""
    pos = positions.to(torch.float64)
    px, py = pos[:, 0] * size[1], pos[:, 1] * size[0]
    ids, x, y, locate = cells("quads", px, py, size)
    pixels = positions.shape[0] * size[0] * size[1]
    index = torch.zeros(pixels, 4, dtype=torch.int64)
    weights = torch.zeros(pixels, 4, dtype=torch.float64)
    covered = torch.zeros(pixels, dtype=torch.bool)
    _fill_cells(ids, x, y, locate, size, index, weights, covered)
    return covered.view(positions.shape[0], *size)


@pytest.mark.parametrize(
    ("lattice", "size"), [((9, 12), (36, 48)), ((7, 5), (29, 17)), ((16, 16), (64, 64))]
)
def test_the_extended_hull_covers_every_pixel_of_a_realistic_warp(
    lattice: tuple[int, int], size: tuple[int, int]
) -> None:
    assert coverage(identity_positions(2, *lattice, dtype=torch.float64), size).all()
    assert coverage(warped_positions(2, *lattice), size).all()


def test_the_ring_sits_on_the_edge_pixel_centres_and_only_pushes_outwards() -> None:
    positions = warped_positions(1, 5, 6)
    px, py = positions[:, 0] * 20, positions[:, 1] * 10
    px[0, 2, 0] = -3.0  # a lattice point already beyond the left edge stays where it is
    ids, x, y = extended_lattice(px, py, (10, 20))
    assert ids.shape == (7, 8)
    assert x.shape == y.shape == (1, 7, 8)
    assert (ids[1:-1, 1:-1].flatten() == torch.arange(30)).all()
    assert (ids[0, 1:-1] == ids[1, 1:-1]).all()
    assert (ids[1:-1, -1] == ids[1:-1, -2]).all()
    assert x[0, 3, 0] == -3.0
    torch.testing.assert_close(x[0, 1:-1, 0], px[0, :, 0].clamp(max=0.5), rtol=0, atol=0)
    torch.testing.assert_close(x[0, 1:-1, -1], px[0, :, -1].clamp(min=19.5), rtol=0, atol=0)
    torch.testing.assert_close(y[0, 0, 1:-1], py[0, 0].clamp(max=0.5), rtol=0, atol=0)
    torch.testing.assert_close(y[0, -1, 1:-1], py[0, -1].clamp(min=9.5), rtol=0, atol=0)
    assert (x[0, 0, 1:-1] == px[0, 0]).all()
    assert (y[0, 1:-1, 0] == py[0, :, 0]).all()
    assert x[0, 0, 0] == min(float(px[0, 0, 0]), 0.5)
    assert y[0, -1, -1] == max(float(py[0, -1, -1]), 9.5)


def test_border_pixels_of_a_warp_interpolate_along_the_edge_only() -> None:
    # Beyond the lattice's left column the value varies along the edge, not across it.
    positions = identity_positions(1, 4, 4, dtype=torch.float64)
    positions[:, 1] = positions[:, 1] + 0.03 * torch.randn(1, 4, 4, dtype=torch.float64)
    z = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    y = nonuniform_upsample(z, positions, (32, 32))
    left = (positions[0, 0, :, 0] * 32).min()
    strip = int(left - 0.5)  # columns whose centres lie left of every left-column point
    assert strip >= 2
    torch.testing.assert_close(y[..., :strip], y[..., :1].expand_as(y[..., :strip]))


def linear(points: torch.Tensor) -> torch.Tensor:
    """A value linear in position, ``[B, 2, ...] -> [B, 1, ...]``."""
    return (1.5 * points[:, :1] - 2.0 * points[:, 1:] + 0.25).to(torch.float64)


def unit_points(points: list[list[tuple[float, float]]]) -> torch.Tensor:
    """``[1, 2, h, w]`` positions from rows of ``(x, y)`` points."""
    return torch.tensor(points, dtype=torch.float64).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize(
    "quad",
    [
        [[(0.2, 0.2), (0.8, 0.2)], [(0.2, 0.8), (0.35, 0.35)]],  # non-convex, reflex at d
        [[(0.2, 0.2), (0.8, 0.25)], [(0.45, 0.4), (0.75, 0.8)]],  # non-convex, reflex at c
        [[(0.1, 0.1), (0.7, 0.3)], [(0.3, 0.8), (0.9, 1.0 + 1e-13)]],  # near-parallelogram
        [[(0.1, 0.2), (0.9, 0.2)], [(0.3, 0.9), (0.6, 0.9)]],  # trapezoid (k2 = 0 branch)
        [[(0.1, 0.1), (0.9, 0.3)], [(0.2, 0.7), (0.5, 0.9)]],  # general convex
    ],
)
def test_awkward_quads_reproduce_linear_functions_and_invert_their_map(
    quad: list[list[tuple[float, float]]],
) -> None:
    positions = unit_points(quad)
    size = (40, 50)
    index, weights = rasterize(positions, size)
    y = nonuniform_upsample(linear(positions), positions, size)
    # Inside the quad (a point inside one of the two triangles on the interior diagonal):
    target = identity_positions(1, *size, dtype=torch.float64)
    q = target[0].permute(1, 2, 0) * torch.tensor([size[1], size[0]], dtype=torch.float64)
    a, b, c, d = (positions[0, :, i, j] * torch.tensor([size[1], size[0]]) for i, j in
                  ((0, 0), (0, 1), (1, 0), (1, 1)))  # fmt: skip
    inside = _in_quad(q, a, b, c, d)
    assert inside.sum() > 50
    torch.testing.assert_close(y[0, 0][inside], linear(target)[0, 0][inside], rtol=0, atol=1e-10)
    # The weights are the bilinear weights of the (s, t) that the quad's map sends to the pixel.
    corners = torch.stack([a, b, c, d])  # [4, 2]
    mapped = torch.einsum("hwk,kc->hwc", weights[0], corners)
    torch.testing.assert_close(mapped[inside], q[inside], rtol=0, atol=1e-9)
    assert (index[0][inside].sort(-1).values == torch.tensor([0, 1, 2, 3])).all()


def _in_quad(
    q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """Brute force: strictly inside the polygon a-b-d-c (even-odd rule)."""
    polygon = [a, b, d, c]
    x, y = q[..., 0], q[..., 1]
    inside = torch.zeros(q.shape[:-1], dtype=torch.bool)
    margin = torch.ones(q.shape[:-1], dtype=torch.bool)
    for k in range(4):
        p0, p1 = polygon[k], polygon[(k + 1) % 4]
        crosses = (p0[1] > y) != (p1[1] > y)
        x_cross = p0[0] + (y - p0[1]) * (p1[0] - p0[0]) / (p1[1] - p0[1])
        inside ^= crosses & (x < x_cross)
        edge = p1 - p0
        distance = (edge[0] * (y - p0[1]) - edge[1] * (x - p0[0])).abs() / edge.norm()
        margin &= distance > 1e-6
    return inside & margin


@pytest.mark.parametrize(
    "name", ["one point", "collapsed row", "collapsed column", "coincident pairs", "random", "line"]
)
def test_degenerate_lattices_give_finite_weights(name: str) -> None:
    positions = warped_positions(2, 6, 7)
    if name == "one point":
        positions = torch.full_like(positions, 0.4)
    elif name == "collapsed row":
        positions[:, :, 3] = positions[:, :, 2]
    elif name == "collapsed column":
        positions[..., 4] = positions[..., 5]
    elif name == "coincident pairs":
        positions[..., 1::2] = positions[..., ::2][..., : positions[..., 1::2].shape[-1]]
    elif name == "random":  # folding everywhere
        positions = torch.rand_like(positions)
    else:
        positions[:, 1] = 0.5
    index, weights = rasterize(positions, (17, 19))
    assert torch.isfinite(weights).all()
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
    assert int(index.min()) >= 0
    assert int(index.max()) < 42
    z = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    assert torch.isfinite(nonuniform_upsample(z, positions, (17, 19))).all()


def test_locate_in_quad_is_finite_for_collapsed_quads() -> None:
    zero = torch.zeros(5, dtype=torch.float64)
    x = [zero, zero + 1, zero, zero + 1]  # a segment: every vertex on y = 0
    y = [zero, zero, zero, zero]
    qx = torch.tensor([0.0, 0.5, 1.0, 2.0, 0.25], dtype=torch.float64)
    inside, parts = locate_in_quad(x, y, qx, torch.zeros_like(qx))
    assert not inside.any()
    assert all(torch.isfinite(part).all() for part in parts)
    point = [zero + 3.0] * 4
    inside, parts = locate_in_quad(point, point, qx, qx)
    assert not inside.any()
    assert all(torch.isfinite(part).all() for part in parts)


def test_gradient_flows_to_z_only_and_gradchecks() -> None:
    positions = warped_positions(2, 4, 5).requires_grad_()
    z = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: nonuniform_upsample(a, positions, (9, 7)), (z,))
    nonuniform_upsample(z, positions, (9, 7)).square().sum().backward()
    assert positions.grad is None
    assert z.grad is not None
    assert z.grad.abs().sum() > 0


def test_non_contiguous_and_channels_last_inputs() -> None:
    positions = warped_positions(2, 6, 8)
    z = torch.randn(2, 5, 6, 8, dtype=torch.float64)
    expected = nonuniform_upsample(z, positions, (13, 21))
    strided_positions = torch.stack([positions, positions], -1)[..., 1]
    assert not strided_positions.is_contiguous()
    layouts = (
        z.to(memory_format=torch.channels_last),
        z.transpose(2, 3).contiguous().transpose(2, 3),
        torch.stack([z, z], -1)[..., 0],
    )
    for layout in layouts:
        assert not layout.is_contiguous()
        out = nonuniform_upsample(layout, strided_positions, (13, 21))
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
