"""rasterize / gather / nonuniform_upsample / lprm_aggregate on a GPU: real shapes, bf16, poisoned
outputs, CUDA graphs, tuning, determinism, int64 offsets.

Run on the GPU machine: ``python -m pytest -m gpu packages/sfm-triton/tests``. The reference runs
in fp64 on the same device; results that reduce many terms are compared relative to their largest
entry (:func:`sfm_triton.testing.assert_close_to_scale`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from sfm_core import functional as reference
from sfm_core.functional import identity_positions
from sfm_triton.ops import lprm as lprm_module
from sfm_triton.ops import nonuniform as nonuniform_module
from sfm_triton.ops.lprm import lprm_aggregate
from sfm_triton.ops.nonuniform import gather, nonuniform_upsample, rasterize
from sfm_triton.testing import (
    assert_close,
    assert_close_to_scale,
    jittered_positions,
    warped_positions,
)

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BATCH = 2
# MSAU works at 1/4 of a 512² crop: mask features (256 channels) or class scores (19, 150).
LPRM_SHAPES = [(256, 128, 128), (19, 128, 128), (150, 127, 97), (96, 33, 17)]
DILATIONS = [1, 2, 4, 8, 16]
# (channels, lattice, target): 1/8 -> 1/4, 1/16 -> 1/4, 1/32 -> 1/4 of a 512² crop.
UPSAMPLINGS = [(256, (64, 64), (128, 128)), (256, (32, 32), (128, 128)), (96, (16, 16), (128, 128))]
AUTOTUNED = [
    lprm_module._lprm_forward_kernel,
    lprm_module._lprm_grad_logits_kernel,
    lprm_module._lprm_grad_v_kernel,
    nonuniform_module._gather_forward_kernel,
    nonuniform_module._gather_grad_weights_kernel,
    nonuniform_module._gather_grad_z_kernel,
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def reference_lprm(
    v: torch.Tensor, logits: torch.Tensor, dilation: int, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v64 = v.detach().double().requires_grad_()
    logits64 = logits.detach().double().requires_grad_()
    out = reference.lprm_aggregate(v64, logits64, dilation)
    grad_v, grad_logits = torch.autograd.grad(out, (v64, logits64), grad.double())
    return out.to(v.dtype), grad_v.to(v.dtype), grad_logits.to(logits.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("shape", LPRM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lprm_matches_reference(
    shape: tuple[int, int, int], dilation: int, channels_last: bool, dtype: torch.dtype
) -> None:
    channels, height, width = shape
    v = torch.randn(BATCH, channels, height, width, device="cuda").to(dtype)
    if channels_last:
        v = v.contiguous(memory_format=torch.channels_last)
    v.requires_grad_()
    logits = (2.0 * torch.randn(BATCH, 9, height, width, device="cuda")).to(dtype)
    logits.requires_grad_()
    out = lprm_aggregate(v, logits, dilation)
    grad = torch.randn_like(out)
    grad_v, grad_logits = torch.autograd.grad(out, (v, logits), grad)
    expected, expected_grad_v, expected_grad_logits = reference_lprm(v, logits, dilation, grad)
    assert_close(out, expected, msg="output")
    assert_close_to_scale(grad_v, expected_grad_v, msg="grad_v")
    assert_close_to_scale(grad_logits, expected_grad_logits, msg="grad_logits")


def unambiguous(index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixels whose reference owner cannot flip: strictly inside a triangle, or nearest-point."""
    nearest = (index[..., 0] == index[..., 1]) & (index[..., 1] == index[..., 2])
    return nearest | (weights.min(-1).values > 1e-5)


def check_rasterize(positions: torch.Tensor, size: tuple[int, int]) -> None:
    """Indices equal where unambiguous, the same interpolant everywhere (vs the fp64 reference)."""
    index, weights = rasterize(positions, size)
    expected_index, expected_weights = reference.rasterize(positions, size)
    sure = unambiguous(expected_index, expected_weights)
    assert sure.float().mean() > 0.5
    assert torch.equal(index[sure], expected_index[sure])
    torch.testing.assert_close(weights[sure], expected_weights[sure], rtol=0, atol=1e-6)
    z = torch.randn(positions.shape[0], 4, *positions.shape[2:], device="cuda", dtype=torch.float64)
    torch.testing.assert_close(
        reference.gather(z, index, weights.double()),
        reference.gather(z, expected_index, expected_weights.double()),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize(("channels", "lattice", "size"), UPSAMPLINGS, ids=str)
def test_rasterize_matches_reference_on_warped_lattices(
    channels: int, lattice: tuple[int, int], size: tuple[int, int]
) -> None:
    check_rasterize(warped_positions(BATCH, *lattice, device="cuda"), size)


@pytest.mark.parametrize(
    "make_positions",
    [
        lambda: jittered_positions(BATCH, 32, 32, jitter=1.2, device="cuda"),  # folded
        lambda: torch.rand(BATCH, 2, 16, 16, device="cuda") * 0.98 + 0.01,  # random point cloud
        lambda: identity_positions(BATCH, 43, 43, device="cuda"),  # centres on lattice edges
    ],
    ids=["folded", "random", "uniform-3x"],
)
def test_rasterize_matches_reference_on_stress_lattices(
    make_positions: Callable[[], torch.Tensor],
) -> None:
    check_rasterize(make_positions(), (129, 129))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("channels", "lattice", "size"), UPSAMPLINGS, ids=str)
def test_gather_matches_reference(
    channels: int,
    lattice: tuple[int, int],
    size: tuple[int, int],
    channels_last: bool,
    dtype: torch.dtype,
) -> None:
    index, weights = reference.rasterize(warped_positions(BATCH, *lattice, device="cuda"), size)
    weights.requires_grad_()
    z = torch.randn(BATCH, channels, *lattice, device="cuda").to(dtype)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    z.requires_grad_()
    out = gather(z, index, weights)
    grad = torch.randn_like(out)
    grad_z, grad_weights = torch.autograd.grad(out, (z, weights), grad)
    z64 = z.detach().double().requires_grad_()
    weights64 = weights.detach().double().requires_grad_()
    expected = reference.gather(z64, index, weights64)
    expected_grad_z, expected_grad_weights = torch.autograd.grad(
        expected, (z64, weights64), grad.double()
    )
    assert_close(out, expected.to(dtype), msg="output")
    assert_close_to_scale(grad_z, expected_grad_z.to(dtype), msg="grad_z")
    assert_close_to_scale(grad_weights, expected_grad_weights.float(), msg="grad_weights")


def test_nonuniform_upsample_matches_reference() -> None:
    positions = warped_positions(BATCH, 32, 32, device="cuda")
    z = torch.randn(BATCH, 256, 32, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = nonuniform_upsample(z, positions, (128, 128))
    grad = torch.randn_like(out)
    (grad_z,) = torch.autograd.grad(out, z, grad)
    z64 = z.detach().double().requires_grad_()
    expected = reference.nonuniform_upsample(z64, positions, (128, 128))
    (expected_grad_z,) = torch.autograd.grad(expected, z64, grad.double())
    assert_close(out, expected.to(out.dtype))
    assert_close_to_scale(grad_z, expected_grad_z.to(grad_z.dtype))


def poison(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Free a poisoned block (NaN, or -1 for integers) of that size into an emptied allocator cache,
    so that the next allocation of the same size (the op's ``torch.empty``) reuses it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    value = float("nan") if dtype.is_floating_point else -1
    block = torch.full(shape, value, dtype=dtype, device="cuda")
    address = block.data_ptr()
    del block
    return address


def test_every_output_element_is_written() -> None:
    """Outputs come from torch.empty; poisoning the block they reuse shows any element left out.

    Every poisoned size is above 10 MiB: the caching allocator gives such blocks segments of their
    own, and ``empty_cache`` has released every other free segment.
    """
    shape = (BATCH, 64, 161, 163)  # 13 MiB in fp32
    v = torch.randn(shape, device="cuda", requires_grad=True)
    logits = torch.randn(BATCH, 9, *shape[2:], device="cuda", requires_grad=True)
    lprm_aggregate(v, logits, 4).sum().backward()  # warm-up: autotuning allocates too
    address = poison(shape, torch.float32)
    out = lprm_aggregate(v, logits, 4)
    assert out.data_ptr() == address, "the poisoned block was not reused; the test proves nothing"
    assert not out.isnan().any()
    grad = torch.randn_like(out)  # before poisoning: it has the size of the block
    address = poison(shape, torch.float32)
    (grad_v,) = torch.autograd.grad(out, v, grad)
    assert grad_v.data_ptr() == address, "the poisoned block was not reused"
    assert not grad_v.isnan().any()

    positions = warped_positions(BATCH, 64, 64, device="cuda")
    size = (509, 517)  # index: 12 MiB
    z = torch.randn(BATCH, 16, 64, 64, device="cuda", requires_grad=True)
    nonuniform_upsample(z, positions, size).sum().backward()  # warm-up
    address = poison((BATCH, *size, 3), torch.int64)
    index, weights = rasterize(positions, size)
    assert index.data_ptr() == address, "the poisoned block was not reused"
    assert int(index.min()) >= 0
    assert int(index.max()) < 64 * 64
    assert not weights.isnan().any()
    address = poison((BATCH, 16, *size), torch.float32)  # 33 MiB
    out = gather(z, index, weights)
    assert out.data_ptr() == address, "the poisoned block was not reused"
    assert not out.isnan().any()

    z = torch.randn(BATCH, 512, 64, 64, device="cuda", requires_grad=True)  # 16 MiB
    out = gather(z, index, weights)
    grad = torch.randn_like(out)
    address = poison(tuple(z.shape), torch.float32)
    (grad_z,) = torch.autograd.grad(out, z, grad)
    assert grad_z.data_ptr() == address, "the poisoned block was not reused"
    assert not grad_z.isnan().any()


def msau_step(
    z: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    out = lprm_aggregate(nonuniform_upsample(z, positions, (96, 80)), logits, 4)
    grad_z, grad_logits = torch.autograd.grad(out, (z, logits), grad)
    return out, grad_z, grad_logits


def test_cuda_graph_capture_and_replay() -> None:
    """The ops capture (no host syncs, no data-dependent allocation) and replay new inputs."""
    z = torch.randn(BATCH, 64, 24, 20, device="cuda", requires_grad=True)
    positions = warped_positions(BATCH, 24, 20, device="cuda")
    logits = torch.randn(BATCH, 9, 96, 80, device="cuda", requires_grad=True)
    grad = torch.randn(BATCH, 64, 96, 80, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # autotune outside the capture
            msau_step(z, positions, logits, grad)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = msau_step(z, positions, logits, grad)

    with torch.no_grad():
        z.copy_(torch.randn_like(z))
        positions.copy_(warped_positions(BATCH, 24, 20, strength=5.0, device="cuda"))
        logits.copy_(3.0 * torch.randn_like(logits))
        grad.copy_(torch.randn_like(grad))
    graph.replay()
    torch.cuda.synchronize()
    for replayed, eager in zip(captured, msau_step(z, positions, logits, grad), strict=True):
        assert_close_to_scale(replayed, eager)


def gather_step(z: torch.Tensor, positions: torch.Tensor, grad: torch.Tensor) -> None:
    """Upsampling with a gradient to the weights too (the grad_weights kernel)."""
    index, weights = rasterize(positions, grad.shape[2:])
    weights.requires_grad_()
    torch.autograd.grad(gather(z, index, weights), (z, weights), grad)


def test_no_retuning_after_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    z = torch.randn(BATCH, 192, 24, 20, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    positions = warped_positions(BATCH, 24, 20, device="cuda")
    logits = torch.randn(BATCH, 9, 96, 80, device="cuda", requires_grad=True)
    grad = torch.randn(BATCH, 192, 96, 80, device="cuda", dtype=torch.bfloat16)
    msau_step(z, positions, logits, grad)
    gather_step(z, positions, grad)
    tuned = [len(kernel.cache) for kernel in AUTOTUNED]
    benchmarks: list[Any] = []
    for kernel in AUTOTUNED:
        bench = kernel._bench
        monkeypatch.setattr(
            kernel, "_bench", lambda *a, _bench=bench, **k: benchmarks.append(a) or _bench(*a, **k)
        )
    for _ in range(3):
        z = torch.randn_like(z).requires_grad_()
        logits = torch.randn_like(logits).requires_grad_()
        msau_step(z, positions, logits, grad)
        gather_step(z, positions, grad)
    torch.cuda.synchronize()
    assert not benchmarks
    assert [len(kernel.cache) for kernel in AUTOTUNED] == tuned


def test_backward_is_deterministic() -> None:
    """No atomics in the gradients of z, v and logits: two runs agree bit for bit."""
    z = torch.randn(BATCH, 128, 32, 32, device="cuda", requires_grad=True)
    positions = warped_positions(BATCH, 32, 32, device="cuda")
    logits = torch.randn(BATCH, 9, 96, 80, device="cuda", requires_grad=True)
    grad = torch.randn(BATCH, 128, 96, 80, device="cuda")
    first = msau_step(z, positions, logits, grad)
    second = msau_step(z, positions, logits, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_lprm_int64_offsets_beyond_two_to_the_31() -> None:
    """v with more than 2³¹ elements: the last channels match the reference run on them alone."""
    channels, height, width = 33, 8192, 8192
    assert channels * height * width > 2**31
    v = torch.randn(1, channels, height, width, device="cuda", dtype=torch.float16)
    v.requires_grad_()
    logits = torch.randn(1, 9, height, width, device="cuda", dtype=torch.float16)
    out = lprm_aggregate(v, logits, 16)
    tail = v.detach()[:, -2:].float()
    expected = reference.lprm_aggregate(tail, logits.float(), 16).half()
    assert_close(out[:, -2:], expected)
    grad = torch.randn_like(out)
    (grad_v,) = torch.autograd.grad(out, v, grad)
    tail = tail.requires_grad_()
    (expected_grad,) = torch.autograd.grad(
        reference.lprm_aggregate(tail, logits.float(), 16), tail, grad[:, -2:].float()
    )
    assert_close_to_scale(grad_v[:, -2:], expected_grad.half())


@pytest.mark.slow
def test_gather_int64_offsets_beyond_two_to_the_31() -> None:
    """An output with more than 2³¹ elements: its last channels match the reference on them alone."""
    channels, size = 33, (8192, 8192)
    assert channels * size[0] * size[1] > 2**31
    positions = identity_positions(1, 2048, 2048, device="cuda")
    index, weights = rasterize(positions, size)
    z = torch.randn(1, channels, 2048, 2048, device="cuda", dtype=torch.float16)
    z.requires_grad_()
    out = gather(z, index, weights)
    tail = z.detach()[:, -2:].float().requires_grad_()
    expected = reference.gather(tail, index, weights)
    assert_close(out[:, -2:], expected.half())
    grad = torch.randn_like(out)
    (grad_z,) = torch.autograd.grad(out, z, grad)
    (expected_grad,) = torch.autograd.grad(expected, tail, grad[:, -2:].float())
    assert_close_to_scale(grad_z[:, -2:], expected_grad.half())
