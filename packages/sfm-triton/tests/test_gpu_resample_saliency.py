"""resample and saliency_grid on a GPU: real shapes, bf16, poisoned outputs, CUDA graphs, tuning.

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
from sfm_triton.ops import resample as resample_module
from sfm_triton.ops import saliency as saliency_module
from sfm_triton.ops.resample import resample
from sfm_triton.ops.saliency import saliency_grid
from sfm_triton.testing import assert_close, assert_close_to_scale

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# SFM stage shapes (C, H, W): ResNet-50 and Swin-T inputs of the three ARS, at a 512² crop.
STAGES = [
    (256, 128, 128),
    (512, 64, 64),
    (1024, 32, 32),
    (96, 128, 128),
    (192, 64, 64),
    (384, 32, 32),
]
BATCH = 2
AUTOTUNED = [
    resample_module._resample_forward_kernel,
    resample_module._resample_backward_kernel,
    saliency_module._saliency_forward_kernel,
    saliency_module._saliency_backward_kernel,
]


def off_integers(grid: torch.Tensor) -> torch.Tensor:
    """Move interior source coordinates within 1e-4 px of an integer by 1e-3 px.

    The bilinear derivative jumps at integer source coordinates, where fp32 and the fp64 reference
    may round to different sides. Clip limits (exact 0 and size - 1) stay; the CPU tests cover
    exact integers with an fp32 reference.
    """
    height, width = grid.shape[1:3]
    size = torch.tensor([width, height], device=grid.device, dtype=torch.float64)
    source = ((grid.double() + 1) * size - 1) / 2
    near = ((source - source.round()).abs() < 1e-4) & (source > 0) & (source < size - 1)
    return torch.where(near, grid + 2e-3 / size.float(), grid)


def ars_grid(batch: int, height: int, width: int) -> torch.Tensor:
    """A learned-looking grid: the reference saliency grid of smooth random logits."""
    logits = torch.randn(batch, 1, height // 8, width // 8, device="cuda")
    logits = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear")
    return off_integers(reference.saliency_grid(3.0 * logits))


def random_grid(batch: int, height: int, width: int) -> torch.Tensor:
    """The stress case: uniformly random positions (no locality at all), a little past the border."""
    return off_integers(torch.rand(batch, height, width, 2, device="cuda") * 2.2 - 1.1)


def reference_resample(
    x: torch.Tensor, grid: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x64 = x.detach().double().requires_grad_()
    grid64 = grid.detach().double().requires_grad_()
    out = reference.resample(x64, grid64)
    grad_x, grad_grid = torch.autograd.grad(out, (x64, grid64), grad_out.double())
    return out.to(x.dtype), grad_x.to(x.dtype), grad_grid.to(grid.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("make_grid", [ars_grid, random_grid], ids=["ars", "random"])
def test_resample_matches_reference(
    make_grid: Callable[[int, int, int], torch.Tensor],
    stage: tuple[int, int, int],
    channels_last: bool,
    dtype: torch.dtype,
) -> None:
    channels, height, width = stage
    x = torch.randn(BATCH, channels, height, width, device="cuda").to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grid = make_grid(BATCH, height, width).requires_grad_()
    out = resample(x, grid)
    grad_out = torch.randn_like(out)
    grad_x, grad_grid = torch.autograd.grad(out, (x, grid), grad_out)
    expected, expected_grad_x, expected_grad_grid = reference_resample(x, grid, grad_out)
    assert_close(out, expected, msg="output")
    assert_close_to_scale(grad_x, expected_grad_x, msg="grad_x")
    assert_close_to_scale(grad_grid, expected_grad_grid, msg="grad_grid")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [128, 64, 32, 33])
def test_saliency_grid_matches_reference(size: int, dtype: torch.dtype) -> None:
    logits = 3.0 * torch.randn(BATCH, 1, size, size + 3, device="cuda")
    logits = logits.to(dtype).requires_grad_()
    grid = saliency_grid(logits)
    grad_grid = torch.randn_like(grid)
    (grad,) = torch.autograd.grad(grid, logits, grad_grid)
    logits64 = logits.detach().double().requires_grad_()
    expected = reference.saliency_grid(logits64)
    (expected_grad,) = torch.autograd.grad(expected, logits64, grad_grid.double())
    assert_close(grid, expected.float(), msg="grid")
    assert_close_to_scale(grad, expected_grad.to(dtype), msg="d logits")


@pytest.fixture
def poisoned_block() -> Callable[[tuple[int, ...], torch.dtype], int]:
    """Free a NaN-filled block of a given size into an otherwise empty allocator cache, so the next
    allocation of that size (the op's ``torch.empty``) reuses it."""

    def poison(shape: tuple[int, ...], dtype: torch.dtype) -> int:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        block = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
        address = block.data_ptr()
        del block
        return address

    return poison


def test_every_output_element_is_written(
    poisoned_block: Callable[[tuple[int, ...], torch.dtype], int],
) -> None:
    """Outputs come from torch.empty; poisoning the block it reuses shows any element left out.

    Every poisoned size is above 10 MiB: the caching allocator gives such blocks segments of their
    own (rounded to 2 MiB), and ``empty_cache`` has released every other free segment.
    """
    batch, channels, height, width = BATCH, 8, 1031, 1037
    x = torch.randn(batch, channels, 257, 263, device="cuda")
    x = x.contiguous(memory_format=torch.channels_last)
    grid = random_grid(batch, height, width).requires_grad_()
    out = resample(x, grid)  # warm-up: autotuning allocates too
    torch.autograd.grad(out, grid, torch.randn_like(out))
    address = poisoned_block((batch, channels, height, width), torch.float32)
    out = resample(x, grid)
    assert out.data_ptr() == address, "the poisoned block was not reused; the test proves nothing"
    assert not out.isnan().any()

    grad_out = torch.randn_like(out)
    address = poisoned_block(tuple(grid.shape), torch.float32)
    (grad_grid,) = torch.autograd.grad(out, grid, grad_out)
    assert grad_grid.data_ptr() == address, "the poisoned block was not reused"
    assert not grad_grid.isnan().any()

    logits = torch.randn(batch, 1, height, width, device="cuda", requires_grad=True)
    saliency_grid(logits).sum().backward()  # warm-up
    address = poisoned_block((batch, height, width, 2), torch.float32)
    grid = saliency_grid(logits)
    assert grid.data_ptr() == address, "the poisoned block was not reused; the test proves nothing"
    assert not grid.isnan().any()


def ars_step(
    x: torch.Tensor, logits: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    out = resample(x, saliency_grid(logits))
    grad_x, grad_logits = torch.autograd.grad(out, (x, logits), grad_out)
    return out, grad_x, grad_logits


def test_cuda_graph_capture_and_replay() -> None:
    """The ops capture (no host syncs, no data-dependent allocation) and replay new inputs."""
    shape = (BATCH, 64, 48, 40)
    x = torch.randn(shape, device="cuda", requires_grad=True)
    logits = torch.randn(BATCH, 1, 48, 40, device="cuda", requires_grad=True)
    grad_out = torch.randn(shape, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # autotune outside the capture
            ars_step(x, logits, grad_out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ars_step(x, logits, grad_out)

    with torch.no_grad():
        x.copy_(torch.randn(shape, device="cuda"))
        logits.copy_(3.0 * torch.randn(BATCH, 1, 48, 40, device="cuda"))
        grad_out.copy_(torch.randn(shape, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    for replayed, eager in zip(captured, ars_step(x, logits, grad_out), strict=True):
        assert_close_to_scale(replayed, eager)


def test_no_retuning_after_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(BATCH, 192, 64, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    logits = torch.randn(BATCH, 1, 64, 64, device="cuda", requires_grad=True)
    ars_step(x, logits, torch.randn_like(x))
    tuned = [len(kernel.cache) for kernel in AUTOTUNED]
    benchmarks: list[Any] = []
    for kernel in AUTOTUNED:
        bench = kernel._bench
        monkeypatch.setattr(
            kernel, "_bench", lambda *a, _bench=bench, **k: benchmarks.append(a) or _bench(*a, **k)
        )
    for _ in range(3):
        x = torch.randn_like(x).requires_grad_()
        logits = torch.randn_like(logits).requires_grad_()
        ars_step(x, logits, torch.randn_like(x))
    torch.cuda.synchronize()
    assert not benchmarks
    assert [len(kernel.cache) for kernel in AUTOTUNED] == tuned


@pytest.mark.slow
def test_int64_offsets_beyond_two_to_the_31() -> None:
    """x with more than 2³¹ elements: samples at its far end land on the right values."""
    channels, height, width = 33, 8192, 8192
    assert channels * height * width > 2**31
    x = torch.randn(1, channels, height, width, device="cuda", dtype=torch.float16)
    x.requires_grad_()
    rows = torch.tensor([0, 4095, 8190, 8191], device="cuda")
    cols = torch.tensor([1, 5000, 8189, 8191], device="cuda")
    gy = (2 * rows.double() + 1) / height - 1  # exact pixel centres: weights are exactly 0 and 1
    gx = (2 * cols.double() + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(gx.view(1, -1), gy.view(-1, 1)), dim=-1)
    grid = grid.float().unsqueeze(0)  # [1, 4, 4, 2]
    out = resample(x, grid)
    expected = x.detach()[0][:, rows][:, :, cols].unsqueeze(0)
    assert torch.equal(out, expected)
    grad_out = torch.randn_like(out)
    (grad_x,) = torch.autograd.grad(out, x, grad_out)
    assert torch.equal(grad_x[0][:, rows][:, :, cols].unsqueeze(0), grad_out)
    assert grad_x.sum(dtype=torch.float32).item() == pytest.approx(
        grad_out.sum(dtype=torch.float32).item(), rel=1e-3, abs=1e-2
    )
