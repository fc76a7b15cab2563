"""Non-uniform upsampling (METHOD.md §3.1): rasterize + gather, against exact and scipy references.

The default method (``"quads"``) is pinned against bilinear resizing and exact linear functions;
METHOD.md §3.1's ``"triangles"`` against scipy's Delaunay interpolation and its nearest fallback.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay

from sfm_core.functional import gather, identity_positions, nonuniform_upsample, rasterize

from .conftest import warped_positions


def covered_mask(
    positions: torch.Tensor, size: tuple[int, int], method: str = "triangles"
) -> torch.Tensor:
    """Target pixels whose rasterized weights come from a cell (not the nearest fallback)."""
    index, weights = rasterize(positions, size, method=method)
    return ~((weights[..., 0] == 1) & (index[..., 0] == index[..., 1]))


def target_centres(size: tuple[int, int]) -> torch.Tensor:
    return identity_positions(1, *size, dtype=torch.float64)


def inside_hull(positions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Target pixels inside the lattice's own hull: a triangle covers them (``[B, Ho, Wo]``)."""
    return covered_mask(positions, size, "triangles")


@pytest.mark.parametrize("method", ["quads", "triangles"])
@pytest.mark.parametrize(
    ("lattice", "size"),
    [((9, 12), (36, 48)), ((7, 5), (29, 17)), ((16, 16), (64, 64)), ((5, 6), (5, 6))],
)
def test_linear_functions_are_reproduced_exactly(
    lattice: tuple[int, int], size: tuple[int, int], method: str
) -> None:
    positions = warped_positions(2, *lattice)
    coeffs = torch.tensor([[1.5, -2.0, 0.25], [-0.5, 3.0, 1.0]], dtype=torch.float64)
    z = torch.einsum("kc,bchw->bkhw", coeffs[:, :2], positions) + coeffs[:, 2].view(1, -1, 1, 1)
    y = nonuniform_upsample(z, positions, size, method=method)
    target = target_centres(size)
    expected = torch.einsum("kc,bchw->bkhw", coeffs[:, :2], target) + coeffs[:, 2].view(1, -1, 1, 1)
    covered = inside_hull(positions, size).unsqueeze(1).expand_as(y)
    assert covered.float().mean() > 0.5
    torch.testing.assert_close(y[covered], expected.expand_as(y)[covered], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["quads", "triangles"])
def test_uniform_lattice_with_equal_size_is_the_identity(method: str) -> None:
    z = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    positions = identity_positions(2, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(nonuniform_upsample(z, positions, (6, 7), method=method), z)


@pytest.mark.parametrize(("method", "taps"), [("quads", 4), ("triangles", 3)])
def test_weights_are_a_partition_of_unity_and_indices_in_range(method: str, taps: int) -> None:
    positions = warped_positions(3, 8, 11)
    index, weights = rasterize(positions, (30, 41), method=method)
    assert index.shape == weights.shape == (3, 30, 41, taps)
    assert index.dtype == torch.int64
    assert weights.dtype == torch.float64
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 30, 41, dtype=torch.float64))
    assert int(index.min()) >= 0
    assert int(index.max()) < 8 * 11


def test_triangles_leave_uncovered_pixels_the_nearest_lattice_value() -> None:
    positions = identity_positions(1, 4, 4, dtype=torch.float64)
    z = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    y = nonuniform_upsample(z, positions, (16, 16), method="triangles")
    # Target pixel (0, 0) lies outside the lattice hull; its nearest lattice point is (0, 0).
    assert y[0, 0, 0, 0] == 0
    assert y[0, 0, 15, 15] == 15
    assert y[0, 0, 0, 15] == 3


def test_agrees_with_scipy_delaunay_where_triangles_coincide() -> None:
    lattice, size = (10, 13), (40, 52)
    positions = warped_positions(1, *lattice, strength=2.0)
    z = torch.randn(1, 4, *lattice, dtype=torch.float64)
    ours = nonuniform_upsample(z, positions, size, method="triangles")[0]
    index, _ = rasterize(positions, size, method="triangles")

    points = np.stack(
        [positions[0, 0].flatten().numpy() * size[1], positions[0, 1].flatten().numpy() * size[0]],
        -1,
    )
    values = z[0].flatten(1).T.numpy()
    queries = target_centres(size)[0].permute(1, 2, 0).reshape(-1, 2).numpy() * [size[1], size[0]]
    triangulation = Delaunay(points)
    theirs = LinearNDInterpolator(triangulation, values)(queries).T.reshape(4, *size)
    simplex = triangulation.find_simplex(queries)
    same = np.zeros(len(queries), dtype=bool)
    inside = simplex >= 0
    scipy_vertices = np.sort(triangulation.simplices[simplex[inside]], axis=1)
    our_vertices = np.sort(index[0].reshape(-1, 3).numpy()[inside], axis=1)
    same[inside] = (scipy_vertices == our_vertices).all(1)
    assert same.mean() > 0.6, "the lattice triangles should mostly be Delaunay triangles"
    same_map = same.reshape(size)
    np.testing.assert_allclose(ours.numpy()[:, same_map], theirs[:, same_map], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["quads", "triangles"])
def test_gather_gradcheck(method: str) -> None:
    positions = warped_positions(2, 5, 6)
    index, weights = rasterize(positions, (9, 13), method=method)
    z = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    w = weights.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: gather(a, index, b), (z, w))


@pytest.mark.parametrize("method", ["quads", "triangles"])
def test_nonuniform_upsample_gradcheck_in_z(method: str) -> None:
    positions = warped_positions(1, 6, 5).requires_grad_()
    z = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a: nonuniform_upsample(a, positions, (14, 11), method=method), (z,)
    )
    nonuniform_upsample(z, positions, (14, 11), method=method).sum().backward()
    assert positions.grad is None, "the gradient flows to z only"


def test_triangles_on_a_row_of_points_are_nearest_only() -> None:
    z = torch.randn(1, 2, 1, 5, dtype=torch.float64)
    positions = identity_positions(1, 1, 5, dtype=torch.float64)
    y = nonuniform_upsample(z, positions, (3, 10), method="triangles")
    assert y.shape == (1, 2, 3, 10)
    torch.testing.assert_close(y[..., 0, 1], z[..., 0, 0])  # a row of points: nearest only


@pytest.mark.parametrize("method", ["quads", "triangles"])
def test_half_values_and_float32_positions(method: str) -> None:
    positions = warped_positions(2, 7, 9, dtype=torch.float32)
    z = torch.randn(2, 5, 7, 9).half()
    y = nonuniform_upsample(z, positions, (21, 27), method=method)
    assert y.dtype == torch.float16
    expected = nonuniform_upsample(z.float(), positions, (21, 27), method=method).half()
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("method", ["quads", "triangles"])
def test_does_not_depend_on_memory_layout(method: str) -> None:
    positions = warped_positions(1, 8, 6).transpose(2, 3).contiguous().transpose(2, 3)
    z = torch.randn(1, 4, 6, 8, dtype=torch.float64).transpose(2, 3)
    torch.testing.assert_close(
        nonuniform_upsample(z, positions, (17, 23), method=method),
        nonuniform_upsample(z.contiguous(), positions.contiguous(), (17, 23), method=method),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: nonuniform_upsample(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5), (8, 8)),
            ValueError,
            "share h, w",
        ),
        (
            lambda: nonuniform_upsample(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4), (8, 8)),
            ValueError,
            "2 channels",
        ),
        (
            lambda: nonuniform_upsample(torch.zeros(2, 2, 4, 4), torch.zeros(1, 2, 4, 4), (8, 8)),
            ValueError,
            "batch",
        ),
        (lambda: rasterize(torch.zeros(1, 2, 4, 4), (8, -1)), ValueError, "size must be positive"),
        (
            lambda: gather(
                torch.zeros(1, 2, 2, 2), torch.full((1, 3, 3, 3), 4), torch.ones(1, 3, 3, 3)
            ),
            ValueError,
            r"index must lie in \[0, h\*w\)",
        ),
        (
            lambda: gather(
                torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 3, 3), torch.ones(1, 3, 3, 3)
            ),
            TypeError,
            "index must be int32 or int64",
        ),
        (
            lambda: gather(
                torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 3, 4).long(), torch.ones(1, 3, 3, 3)
            ),
            ValueError,
            r"\[B, Ho, Wo, T\]",
        ),
        (
            lambda: nonuniform_upsample(
                torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), (8, 8), method="delaunay"
            ),
            ValueError,
            r"method must be one of \['quads', 'triangles'\], got 'delaunay'",
        ),
    ],
)
def test_bad_input(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_nearest_fallback_matches_brute_force() -> None:
    # A shrunken, jittered lattice leaves a wide uncovered margin whose pixels need the fallback.
    positions = 0.25 + 0.5 * identity_positions(2, 9, 11, dtype=torch.float64)
    positions = positions + 0.01 * torch.randn_like(positions)
    size = (23, 29)
    index, weights = rasterize(positions, size, method="triangles")
    uncovered = ~covered_mask(positions, size)
    assert uncovered.float().mean() > 0.5
    points = positions.flatten(2).transpose(1, 2) * torch.tensor([size[1], size[0]])  # [B, hw, 2]
    centres = target_centres(size)[0].permute(1, 2, 0).reshape(-1, 2) * torch.tensor(
        [size[1], size[0]]
    )
    nearest = torch.cdist(centres.unsqueeze(0).expand(2, -1, -1), points).argmin(-1).view(2, *size)
    torch.testing.assert_close(index[..., 0][uncovered], nearest[uncovered])
    assert (weights[..., 0][uncovered] == 1).all()


@pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace.*` is deprecated"
)
@pytest.mark.parametrize("method", ["quads", "triangles"])
def test_traces_with_jit(method: str) -> None:
    # fvcore counts FLOPs through torch.jit.trace: rasterize's index bookkeeping must trace.
    z = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    positions = warped_positions(2, 5, 6)

    def upsample(z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return nonuniform_upsample(z, positions, (10, 12), method=method)

    traced = torch.jit.trace(upsample, (z, positions), check_trace=False)
    torch.testing.assert_close(traced(z, positions), upsample(z, positions), rtol=0, atol=0)
