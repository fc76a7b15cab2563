"""The Triton rasterize / gather / nonuniform_upsample against the reference, on tiny lattices.

Both methods: ``"quads"`` (the default, 4 taps) and ``"triangles"`` (METHOD.md §3.1, 3 taps).
Rasterize decides containment in float64 with the reference's formula, but a pixel centre exactly
on a shared edge may legitimately go to either cell when the last bits differ. So indices are
compared where the reference's owner triangle is unambiguous (all weights clearly positive, or a
nearest-point pixel), and everywhere else through gathered values, which are continuous across
edges.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sfm_core import functional as reference
from sfm_core.functional import identity_positions
from sfm_triton.ops.lprm import lprm_aggregate
from sfm_triton.ops.nonuniform import gather, nonuniform_upsample, rasterize
from sfm_triton.testing import jittered_positions, warped_positions

# (kind, batch, lattice, target): up- and downsampling, equal size, non-integer factors, a single
# cell, degenerate rows/columns (no triangles: nearest only), uniform lattices whose pixel centres
# fall exactly on lattice edges (3x), folded lattices (jitter past half a cell: holes and overlaps)
# and a random point cloud whose triangles overlap everywhere (lowest id wins).
CASES = [
    ("warped", 2, (5, 6), (9, 13)),
    ("warped", 1, (7, 5), (29, 17)),
    ("warped", 1, (9, 8), (5, 4)),
    ("warped", 1, (6, 7), (6, 7)),
    ("uniform", 1, (4, 4), (16, 16)),
    ("uniform", 1, (4, 5), (12, 15)),
    ("uniform", 2, (1, 5), (3, 10)),
    ("uniform", 1, (5, 1), (7, 3)),
    ("jittered", 1, (2, 2), (5, 5)),
    ("jittered", 2, (6, 5), (13, 11)),
    ("folded", 1, (6, 6), (14, 14)),
    ("random", 1, (4, 4), (12, 12)),
    # Over 1024 lattice points: the nearest-point search prunes with a strided sub-lattice bound.
    ("warped", 1, (32, 33), (70, 72)),
    ("folded", 1, (33, 32), (40, 40)),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_positions(kind: str, batch: int, lattice: tuple[int, int]) -> torch.Tensor:
    if kind == "warped":
        return warped_positions(batch, *lattice)
    if kind == "uniform":
        return identity_positions(batch, *lattice)
    if kind == "jittered":
        return jittered_positions(batch, *lattice)
    if kind == "folded":
        return jittered_positions(batch, *lattice, jitter=1.2)
    return torch.rand(batch, 2, *lattice) * 0.98 + 0.01


def unambiguous(index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixels whose reference owner cannot flip: strictly inside a cell, or nearest-point."""
    nearest = (index == index[..., :1]).all(-1) & (weights[..., 0] == 1)
    return nearest | (weights.min(-1).values > 1e-5)


@pytest.mark.parametrize(("method", "taps"), [("quads", 4), ("triangles", 3)])
@pytest.mark.parametrize(("kind", "batch", "lattice", "size"), CASES, ids=str)
def test_rasterize_matches_reference(
    kind: str,
    batch: int,
    lattice: tuple[int, int],
    size: tuple[int, int],
    method: str,
    taps: int,
    device: torch.device,
) -> None:
    positions = make_positions(kind, batch, lattice)
    index, weights = rasterize(positions.to(device), size, method=method)
    assert index.shape == weights.shape == (batch, *size, taps)
    assert index.dtype == torch.int64
    assert weights.dtype == torch.float32
    index, weights = index.cpu(), weights.cpu()
    expected_index, expected_weights = reference.rasterize(positions, size, method=method)

    sure = unambiguous(expected_index, expected_weights)
    if method == "triangles":  # quads: on uniform lattices most pixel centres lie on cell edges
        assert sure.float().mean() > 0.5
    assert torch.equal(index[sure], expected_index[sure])
    torch.testing.assert_close(weights[sure], expected_weights[sure], rtol=0, atol=1e-6)
    # Everywhere: the same interpolant (a random field through both rasterizations).
    z = torch.randn(batch, 4, *lattice, dtype=torch.float64)
    torch.testing.assert_close(
        reference.gather(z, index, weights.double()),
        reference.gather(z, expected_index, expected_weights.double()),
        rtol=0,
        atol=1e-5,
    )


def test_rasterize_position_dtypes(device: torch.device) -> None:
    positions = warped_positions(1, 5, 4, strength=4.0)
    for dtype in (torch.float64, torch.float16):
        cast = positions.to(dtype)
        index, weights = rasterize(cast.to(device), (11, 9))
        expected_index, expected_weights = reference.rasterize(cast, (11, 9))
        assert weights.dtype == expected_weights.dtype
        sure = unambiguous(expected_index, expected_weights)
        assert torch.equal(index.cpu()[sure], expected_index[sure])
        torch.testing.assert_close(weights.cpu()[sure], expected_weights[sure], rtol=0, atol=1e-6)


def test_rasterize_reads_strided_positions(device: torch.device) -> None:
    pixel_major = warped_positions(2, 6, 5).permute(0, 2, 3, 1).contiguous()
    positions = pixel_major.permute(0, 3, 1, 2)  # [B, 2, h, w] view with x, y innermost
    assert not positions.is_contiguous()
    index, weights = rasterize(positions.to(device), (10, 9))
    expected_index, expected_weights = rasterize(positions.contiguous().to(device), (10, 9))
    assert torch.equal(index, expected_index)
    assert torch.equal(weights, expected_weights)


@pytest.mark.parametrize(
    ("lattice", "size"),
    [((4, 4), (16, 16)), ((5, 7), (13, 11)), ((6, 7), (6, 7)), ((1, 5), (3, 10)), ((9, 8), (4, 5))],
)
def test_quads_on_a_uniform_lattice_are_bilinear_resizing(
    lattice: tuple[int, int], size: tuple[int, int], device: torch.device
) -> None:
    z = torch.randn(2, 3, *lattice, device=device)
    positions = identity_positions(2, *lattice, device=device, dtype=torch.float64)
    expected = F.interpolate(z.cpu().double(), size, mode="bilinear", align_corners=False)
    out = nonuniform_upsample(z, positions, size)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=0, atol=1e-6)


def test_triangles_leave_uncovered_pixels_the_nearest_lattice_value(device: torch.device) -> None:
    positions = identity_positions(1, 4, 4, device=device)
    z = torch.arange(16, dtype=torch.float32, device=device).view(1, 1, 4, 4) + 1
    y = nonuniform_upsample(z, positions, (16, 16), method="triangles")
    assert y[0, 0, 0, 0] == 1
    assert y[0, 0, 15, 15] == 16
    assert y[0, 0, 0, 15] == 4


def make_z(shape: tuple[int, int, int, int], dtype: torch.dtype, layout: str) -> torch.Tensor:
    """Random lattice values in the asked layout (``strided``: every other channel, offset map)."""
    batch, channels, height, width = shape
    if layout == "strided":
        wide = torch.randn(batch, 2 * channels, height + 1, width).to(dtype)
        return wide[:, 1::2, 1:]
    z = torch.randn(shape).to(dtype)
    return z.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else z


def reference_gather(
    z: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output and gradients of the float64 reference gather, in the inputs' dtypes."""
    z64 = z.detach().cpu().double().requires_grad_()
    weights64 = weights.detach().cpu().double().requires_grad_()
    out = reference.gather(z64, index.cpu(), weights64)
    grad_z, grad_weights = torch.autograd.grad(out, (z64, weights64), grad.cpu().double())
    return out.to(z.dtype), grad_z.to(z.dtype), grad_weights.to(weights.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize(
    ("batch", "channels", "lattice", "size"),
    [(2, 3, (5, 6), (9, 13)), (1, 19, (4, 4), (16, 16)), (1, 5, (7, 5), (3, 2))],
    ids=str,
)
def test_gather_matches_reference(
    batch: int,
    channels: int,
    lattice: tuple[int, int],
    size: tuple[int, int],
    layout: str,
    dtype: torch.dtype,
    device: torch.device,
    assert_close: Callable[..., None],
) -> None:
    index, weights = reference.rasterize(warped_positions(batch, *lattice), size)
    index, weights = index.to(device), weights.to(device).requires_grad_()
    z = make_z((batch, channels, *lattice), dtype, layout).to(device).requires_grad_()
    out = gather(z, index, weights)
    grad = torch.randn(out.shape).to(dtype).to(device)
    grad_z, grad_weights = torch.autograd.grad(out, (z, weights), grad)
    expected, expected_grad_z, expected_grad_weights = reference_gather(z, index, weights, grad)
    assert out.dtype == grad_z.dtype == dtype
    assert grad_weights.dtype == torch.float32
    assert_close(out.cpu(), expected, msg="out")
    assert_close(grad_z.cpu(), expected_grad_z, msg="grad_z")
    # grad_weights sums over channels products of dtype-rounded operands: compare in float32.
    assert_close(grad_weights.cpu(), expected_grad_weights, msg="grad_weights")
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_gather_of_three_triangle_taps(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    index, weights = reference.rasterize(warped_positions(2, 5, 6), (9, 13), method="triangles")
    index, weights = index.to(device), weights.to(device).requires_grad_()
    z = make_z((2, 3, 5, 6), torch.float32, "channels_last").to(device).requires_grad_()
    out = gather(z, index, weights)
    grad = torch.randn(out.shape, device=device)
    grad_z, grad_weights = torch.autograd.grad(out, (z, weights), grad)
    expected, expected_grad_z, expected_grad_weights = reference_gather(z, index, weights, grad)
    assert_close(out.cpu(), expected, msg="out")
    assert_close(grad_z.cpu(), expected_grad_z, msg="grad_z")
    assert_close(grad_weights.cpu(), expected_grad_weights, msg="grad_weights")


def test_gather_int32_index_and_half_weights(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    index, weights = reference.rasterize(jittered_positions(1, 4, 6), (7, 9))
    z = torch.randn(1, 3, 4, 6)
    out = gather(z.to(device), index.int().to(device), weights.half().to(device))
    expected = reference.gather(z.double(), index, weights.half().double()).float()
    assert_close(out.cpu(), expected)


@pytest.mark.parametrize("method", ["quads", "triangles"])
@pytest.mark.parametrize("kind", ["warped", "folded"])
def test_nonuniform_upsample_matches_reference(
    kind: str, method: str, device: torch.device, assert_close: Callable[..., None]
) -> None:
    positions = make_positions(kind, 2, (6, 5))
    z = torch.randn(2, 5, 6, 5, device=device, requires_grad=True)
    out = nonuniform_upsample(z, positions.to(device), (13, 11), method=method)
    grad = torch.randn(out.shape, device=device)
    (grad_z,) = torch.autograd.grad(out, (z,), grad)
    z64 = z.detach().cpu().double().requires_grad_()
    expected = reference.nonuniform_upsample(z64, positions, (13, 11), method=method)
    (expected_grad_z,) = torch.autograd.grad(expected, (z64,), grad.cpu().double())
    assert_close(out.cpu(), expected.float())
    assert_close(grad_z.cpu(), expected_grad_z.float())


def test_nonuniform_upsample_gives_no_gradient_to_positions(device: torch.device) -> None:
    positions = warped_positions(1, 4, 5).to(device).requires_grad_()
    z = torch.randn(1, 2, 4, 5, device=device, requires_grad=True)
    nonuniform_upsample(z, positions, (8, 9)).sum().backward()
    assert positions.grad is None
    assert z.grad is not None
    # Every target pixel's weights sum to 1, so d(sum)/dz sums to channels x pixels.
    assert torch.isclose(z.grad.sum(), torch.tensor(2.0 * 8 * 9, device=device))


def test_gradient_to_one_input_at_a_time(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    index, weights = reference.rasterize(warped_positions(1, 5, 5), (8, 7))
    index, weights = index.to(device), weights.to(device)
    z = torch.randn(1, 3, 5, 5, device=device)
    grad = torch.randn(1, 3, 8, 7, device=device)
    _, expected_grad_z, expected_grad_weights = reference_gather(z, index, weights, grad)
    (grad_z,) = torch.autograd.grad(gather(z.requires_grad_(), index, weights), (z,), grad)
    assert_close(grad_z.cpu(), expected_grad_z)
    weights.requires_grad_()
    (grad_weights,) = torch.autograd.grad(gather(z.detach(), index, weights), (weights,), grad)
    assert_close(grad_weights.cpu(), expected_grad_weights)


def test_flops_are_counted(device: torch.device) -> None:
    positions = warped_positions(1, 4, 5).to(device)
    z = torch.randn(1, 3, 4, 5, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        nonuniform_upsample(z, positions, (8, 9)).sum().backward()
    # 4 MACs (taps of a quad) per output element forward and again for grad_z (no grad to the
    # weights).
    assert counter.get_total_flops() == 2 * 4 * (3 * 8 * 9) * 2


def test_opcheck(device: torch.device) -> None:
    positions = warped_positions(1, 4, 5).to(device)
    torch.library.opcheck(torch.ops.sfm.rasterize.default, (positions, [7, 6]))
    torch.library.opcheck(torch.ops.sfm.rasterize.default, (positions, [7, 6], "triangles"))
    index, weights = rasterize(positions, (7, 6))
    z = torch.randn(1, 3, 4, 5, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.sfm.gather.default, (z, index, weights.requires_grad_()))
    grad = torch.randn(1, 3, 7, 6, device=device)
    for needs in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(  # the backward is not differentiable itself
            torch.ops.sfm.gather_backward.default,
            (grad, z.detach(), index, weights.detach(), *needs),
        )


@pytest.mark.no_runtime
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: nonuniform_upsample(torch.ones(1, 2, 4, 4), torch.ones(1, 2, 4, 5), (8, 8)),
            ValueError,
            "share h, w",
        ),
        (
            lambda: nonuniform_upsample(torch.ones(1, 2, 4, 4), torch.ones(1, 3, 4, 4), (8, 8)),
            ValueError,
            "2 channels",
        ),
        (
            lambda: nonuniform_upsample(torch.ones(2, 2, 4, 4), torch.ones(1, 2, 4, 4), (8, 8)),
            ValueError,
            "batch",
        ),
        (lambda: rasterize(torch.ones(1, 2, 4, 4), (8, -1)), ValueError, "size must be positive"),
        (lambda: rasterize(torch.ones(1, 2, 4, 4), (8.0, 8)), TypeError, "pair of ints"),
        (
            lambda: gather(torch.ones(1, 2, 2, 2), torch.ones(1, 3, 3, 3), torch.ones(1, 3, 3, 3)),
            TypeError,
            "index must be int32 or int64",
        ),
        (
            lambda: gather(
                torch.ones(1, 2, 2, 2), torch.ones(1, 3, 3, 4).long(), torch.ones(1, 3, 3, 3)
            ),
            ValueError,
            r"\[B, Ho, Wo, T\]",
        ),
        (
            lambda: nonuniform_upsample(
                torch.ones(1, 2, 4, 4), torch.ones(1, 2, 4, 4), (8, 8), method="delaunay"
            ),
            ValueError,
            r"method must be one of \['quads', 'triangles'\]",
        ),
        (
            lambda: gather(
                torch.ones(1, 2, 2, 2, dtype=torch.float64),
                torch.ones(1, 3, 3, 3).long(),
                torch.ones(1, 3, 3, 3),
            ),
            TypeError,
            "z must have dtype float16, bfloat16, float32 in sfm_triton",
        ),
    ],
)
def test_bad_input(call: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_gather_rejects_indices_out_of_range(device: torch.device) -> None:
    with pytest.raises(ValueError, match=r"index must lie in \[0, h\*w\)"):
        gather(
            torch.ones(1, 2, 2, 2, device=device),
            torch.full((1, 3, 3, 3), 4, device=device),
            torch.ones(1, 3, 3, 3, device=device),
        )


class TinyMSAU(torch.nn.Module):
    """Demodulation then one LPRM step: MSAU's two kernels in a row."""

    def forward(
        self, z: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        upsampled = nonuniform_upsample(z, positions, (9, 8))
        return lprm_aggregate(upsampled, logits, 2)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    positions = warped_positions(1, 4, 5).to(device)
    z = torch.randn(1, 3, 4, 5, device=device, requires_grad=True)
    logits = torch.randn(1, 9, 9, 8, device=device, requires_grad=True)
    model = TinyMSAU()
    out = torch.compile(model, fullgraph=True)(z, positions, logits)
    grads = torch.autograd.grad(out.square().sum(), (z, logits))
    expected = model(z, positions, logits)
    expected_grads = torch.autograd.grad(expected.square().sum(), (z, logits))
    assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert_close(grad, expected_grad)


def test_fvcore_handles_count_the_ops(device: torch.device) -> None:
    """fvcore (torch.jit.trace) sees ``sfm::<op>`` nodes; with the handles every one is counted."""
    jit_analysis = pytest.importorskip("fvcore.nn")
    from sfm_core.flops import fvcore_handles, gather_macs, lprm_aggregate_macs

    class TracedMSAU(torch.nn.Module):
        def forward(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            index, weights = torch.ops.sfm.rasterize(positions, [9, 8])
            upsampled = torch.ops.sfm.gather(z, index, weights)
            return torch.ops.sfm.lprm_aggregate(
                upsampled, upsampled[:, :1].expand(-1, 9, -1, -1), 1
            )  # type: ignore[no-any-return]

    inputs = (torch.randn(1, 3, 4, 5, device=device), warped_positions(1, 4, 5).to(device))
    counted = jit_analysis.FlopCountAnalysis(TracedMSAU(), inputs).set_op_handle(**fvcore_handles())
    by_operator = counted.by_operator()
    assert by_operator["gather"] == gather_macs((1, 3, 4, 5), (1, 9, 8, 4))
    assert by_operator["lprm_aggregate"] == lprm_aggregate_macs((1, 3, 9, 8))
    assert not counted.unsupported_ops()
