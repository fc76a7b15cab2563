"""The cpu backend's resample (numba backward of grid_sample) against the reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from sfm_core import backends, ops
from sfm_core.cpu import _jit
from sfm_core.cpu import sampler as cpu_op
from sfm_core.functional import resample as reference
from sfm_core.nn import AdaptiveResampling


@pytest.fixture(params=["numba", "fallback"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the numba kernel, then without it (the reference runs)."""
    monkeypatch.setenv(_jit.JIT_ENV, "1" if request.param == "numba" else "0")
    assert (_jit.kernels(cpu_op.KERNELS) is not None) == (request.param == "numba")
    return str(request.param)


def gradients(
    fn: Callable[..., torch.Tensor], x: torch.Tensor, grid: torch.Tensor, seed: int = 0
) -> list[torch.Tensor]:
    """The output and the gradients of ``x`` and ``grid`` for a fixed random cotangent."""
    leaves = [x.detach().requires_grad_(), grid.detach().requires_grad_()]
    out = fn(*leaves)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad(out, leaves, cotangent.to(out.dtype))
    return [out.detach(), *grads]


def awkward_grid(batch: int, out_h: int, out_w: int, dtype: torch.dtype) -> torch.Tensor:
    """Points inside and outside [-1, 1] (border clamping), plus generic ones."""
    gen = torch.Generator().manual_seed(1)
    return (torch.rand(batch, out_h, out_w, 2, generator=gen, dtype=dtype) * 2.8 - 1.4).to(dtype)


# (x shape, grid's output size): odd sizes, one row, one column, one pixel, C = 1 and 5.
AWKWARD = [
    ((2, 3, 7, 5), (4, 6)),
    ((1, 1, 1, 6), (3, 2)),
    ((2, 5, 5, 1), (2, 3)),
    ((1, 2, 1, 1), (2, 2)),
    ((1, 5, 4, 9), (9, 4)),
]


@pytest.mark.parametrize(("shape", "out_size"), AWKWARD)
def test_gradcheck_against_the_reference(
    kernels: str, shape: tuple[int, ...], out_size: tuple[int, int]
) -> None:
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    grid = awkward_grid(shape[0], *out_size, torch.float64).requires_grad_()
    for got, expected in zip(
        gradients(cpu_op.resample, x, grid), gradients(reference, x, grid), strict=True
    ):
        torch.testing.assert_close(got, expected)
    assert torch.autograd.gradcheck(cpu_op.resample, (x, grid))


def test_points_on_pixel_centres_and_edges_match_aten(kernels: str) -> None:
    """Exactly on the first/last pixel centre (the border kink: aten passes no gradient there),
    on inner centres (a kink of the grid gradient) and on pixel edges, in float64 and float32."""
    height, width = 4, 6
    centres_x = [(2 * i + 1) / width - 1 for i in range(width)]
    edges_x = [2 * i / width - 1 for i in range(width + 1)]
    centres_y = [(2 * i + 1) / height - 1 for i in range(height)]
    points = [(gx, gy) for gx in centres_x + edges_x for gy in [*centres_y, -1.0, 0.0, 1.0]]
    for dtype in (torch.float64, torch.float32):
        x = torch.randn(2, 3, height, width, dtype=dtype)
        grid = torch.tensor(points, dtype=dtype).view(1, 1, -1, 2).expand(2, -1, -1, -1)
        for got, expected in zip(
            gradients(cpu_op.resample, x, grid), gradients(reference, x, grid), strict=True
        ):
            torch.testing.assert_close(got, expected)


def test_non_contiguous_and_channels_last_inputs(kernels: str) -> None:
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64).transpose(2, 3)
    grid = awkward_grid(2, 5, 6, torch.float64).transpose(1, 2)
    last = torch.randn(2, 4, 7, 9, dtype=torch.float64).to(memory_format=torch.channels_last)
    for values in (x, last):
        got = gradients(cpu_op.resample, values, grid)
        for g, e in zip(got, gradients(reference, values, grid), strict=True):
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize(("shape", "grid_shape"), [((0, 3, 5, 6), (0, 4, 4, 2)),
                                                   ((2, 0, 5, 6), (2, 4, 4, 2)),
                                                   ((2, 3, 5, 6), (2, 0, 4, 2))])  # fmt: skip
def test_empty_inputs(kernels: str, shape: tuple[int, ...], grid_shape: tuple[int, ...]) -> None:
    x, grid = torch.randn(*shape), torch.rand(*grid_shape) * 2 - 1
    for g, e in zip(
        gradients(cpu_op.resample, x, grid), gradients(reference, x, grid), strict=True
    ):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e)


def test_non_finite_grid_points_and_mixed_dtypes_follow_the_reference(kernels: str) -> None:
    x = torch.randn(1, 3, 6, 5)
    grid = awkward_grid(1, 4, 4, torch.float64)
    grid[0, 1, 2, 0] = float("nan")
    grid[0, 3, 0, 1] = float("inf")
    got, expected = gradients(cpu_op.resample, x, grid), gradients(reference, x, grid)
    assert got[0].dtype == torch.float32
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, equal_nan=True)
    half = cpu_op.resample(x.half(), grid.half())
    torch.testing.assert_close(half, reference(x.half(), grid.half()), equal_nan=True)


@pytest.mark.parametrize("shape", [(2, 256, 56, 56)])
def test_float32_at_the_resnet_res3_size(kernels: str, shape: tuple[int, ...]) -> None:
    """Within 1e-5 (relative) of aten in float32."""
    x = torch.randn(*shape)
    grid = awkward_grid(shape[0], shape[2], shape[3], torch.float32) / 1.2
    got, expected = gradients(cpu_op.resample, x, grid), gradients(reference, x, grid)
    for fast, slow in zip(got, expected, strict=True):
        assert float((fast - slow).norm() / slow.norm()) <= 1e-5
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5 * float(slow.abs().max()))


@pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace.*` is deprecated"
)
def test_runs_when_forced_not_under_auto_nor_jit_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not measured faster than aten: ``auto`` keeps the reference; ``backend="cpu"`` runs it."""
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    cpu = torch.device("cpu")
    assert backends.implementation("resample", cpu, None, reference) is reference
    assert backends.implementation("resample", cpu, "cpu", reference) is cpu_op.resample
    assert backends.implementation("resample", cpu, "reference", reference) is reference
    x, grid = torch.randn(1, 2, 4, 4), torch.rand(1, 3, 3, 2)
    torch.testing.assert_close(ops.resample(x, grid, backend="cpu"), reference(x, grid))
    traced = torch.jit.trace(ops.resample, (torch.randn(1, 2, 4, 4), torch.rand(1, 3, 3, 2)))
    assert "sfm::cpu_resample" not in str(traced.graph)
    assert "grid_sampler" in str(traced.graph)


def test_compiles_whole_and_matches(kernels: str) -> None:
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    grid = awkward_grid(2, 4, 7, torch.float64)
    compiled = torch.compile(cpu_op.resample, fullgraph=True, backend="aot_eager")
    for g, e in zip(gradients(compiled, x, grid), gradients(reference, x, grid), strict=True):
        torch.testing.assert_close(g, e)


def test_numba_missing_runs_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jit, "numba_installed", lambda: False)
    assert _jit.kernels(cpu_op.KERNELS) is None
    x, grid = torch.randn(1, 3, 6, 5), torch.rand(1, 4, 4, 2) * 2 - 1
    assert torch.equal(cpu_op.resample(x, grid), reference(x, grid))


def test_adaptive_resampling_matches_the_reference_backend(
    kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` with the cpu backend's resample against ``reference``, forward and backward."""
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    cpu = dataclasses.replace(backends.plugins()[backends.CPU], forced_only=frozenset())
    monkeypatch.setattr(backends, "_loaded", {**backends.plugins(), backends.CPU: cpu})
    chosen = backends.implementation("resample", torch.device("cpu"), None, reference)
    assert chosen is cpu_op.resample
    module = AdaptiveResampling(4).double()
    x = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    results: dict[str | None, list[torch.Tensor]] = {}
    for backend in (None, "reference"):
        module.backend = backend
        module.zero_grad()
        leaf = x.clone().requires_grad_()
        out = module(leaf).features
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        assert leaf.grad is not None
        results[backend] = [out.detach(), leaf.grad.clone(), *grads]
    for got, expected in zip(results[None], results["reference"], strict=True):
        torch.testing.assert_close(got, expected)
