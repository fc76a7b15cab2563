"""The cpu backend's lprm_aggregate: the reference's function, with numba's kernels and without."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from sfm_core import backends, ops
from sfm_core.cpu import _jit
from sfm_core.cpu import lprm as cpu_lprm
from sfm_core.functional import lprm_aggregate as reference
from sfm_core.nn import LocalPixelRelation


@pytest.fixture(params=["numba", "eager"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the numba kernels, then with the plain-PyTorch fallback."""
    monkeypatch.setenv(_jit.JIT_ENV, "1" if request.param == "numba" else "0")
    assert (_jit.kernels(cpu_lprm.KERNELS) is not None) == (request.param == "numba")
    return str(request.param)


def gated_reference(
    v: torch.Tensor, logits: torch.Tensor, dilation: int, gate: torch.Tensor
) -> torch.Tensor:
    return v + gate * (reference(v, logits, dilation) - v)


# (shape of v, dilation): odd sizes, a dilation past the map, one row, one column, one pixel.
AWKWARD = [
    ((2, 3, 7, 5), 1),
    ((2, 3, 7, 5), 3),
    ((1, 2, 4, 9), 8),
    ((1, 2, 9, 4), 30),
    ((1, 2, 1, 6), 2),
    ((2, 1, 5, 1), 1),
    ((1, 2, 1, 1), 4),
]


@pytest.mark.parametrize(("shape", "dilation"), AWKWARD)
def test_gradcheck_against_the_reference(
    kernels: str, shape: tuple[int, ...], dilation: int
) -> None:
    v = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(shape[0], 9, *shape[2:], dtype=torch.float64, requires_grad=True)
    gate = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(
        cpu_lprm.lprm_aggregate(v, logits, dilation), reference(v, logits, dilation)
    )
    torch.testing.assert_close(
        cpu_lprm.lprm_gated_aggregate(v, logits, dilation, gate),
        gated_reference(v, logits, dilation, gate),
    )
    # fast_mode: the Jacobian checked along random directions (the full one is slow here).
    assert torch.autograd.gradcheck(
        lambda a, b: cpu_lprm.lprm_aggregate(a, b, dilation), (v, logits), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda a, b, g: cpu_lprm.lprm_gated_aggregate(a, b, dilation, g),
        (v, logits, gate),
        fast_mode=True,
    )


def gradients(
    run: Callable[..., torch.Tensor], *inputs: torch.Tensor, seed: int = 1
) -> list[torch.Tensor]:
    """The output and the gradients of every input of ``run`` under one random cotangent."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    out = run(*leaves)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad(out, leaves, cotangent.to(out.dtype), allow_unused=True)
    pairs = zip(leaves, grads, strict=True)
    return [out.detach(), *(torch.zeros_like(x) if g is None else g for x, g in pairs)]


def test_non_contiguous_and_channels_last_inputs(kernels: str) -> None:
    v = torch.randn(2, 4, 9, 7, dtype=torch.float64).transpose(2, 3)
    logits = torch.randn(2, 7, 9, 9, dtype=torch.float64).permute(0, 3, 1, 2)
    last = torch.randn(2, 4, 7, 9, dtype=torch.float64).to(memory_format=torch.channels_last)
    for values in (v, last):
        expected = gradients(lambda a, b: reference(a, b, 2), values, logits)
        got = gradients(lambda a, b: cpu_lprm.lprm_aggregate(a, b, 2), values, logits)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize("shape", [(0, 3, 5, 6), (2, 0, 5, 6)])
def test_empty_batch_or_channels(kernels: str, shape: tuple[int, ...]) -> None:
    v = torch.randn(*shape)
    logits = torch.randn(shape[0], 9, *shape[2:])
    gate = torch.tensor(0.5)
    expected = gradients(lambda a, b, g: gated_reference(a, b, 2, g), v, logits, gate)
    got = gradients(lambda a, b, g: cpu_lprm.lprm_gated_aggregate(a, b, 2, g), v, logits, gate)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e)


def test_mixed_and_half_dtypes_follow_the_reference(kernels: str) -> None:
    v = torch.randn(1, 3, 6, 5)
    logits = torch.randn(1, 9, 6, 5, dtype=torch.float64)
    out = cpu_lprm.lprm_aggregate(v, logits, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(v, logits, 1))
    half = cpu_lprm.lprm_aggregate(v.half(), logits.half(), 2)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, reference(v.half(), logits.half(), 2))


def test_float32_at_the_mask2former_size(kernels: str) -> None:
    """[2, 256, 128, 128], gated: within 1e-5 (relative) of the float32 reference."""
    shape = (2, 256, 128, 128)
    v, logits = torch.randn(*shape), torch.randn(2, 9, *shape[2:])
    gate = torch.tensor(0.7)
    expected = gradients(lambda a, b, g: gated_reference(a, b, 4, g), v, logits, gate)
    got = gradients(lambda a, b, g: cpu_lprm.lprm_gated_aggregate(a, b, 4, g), v, logits, gate)
    for fast, slow in zip(got, expected, strict=True):
        assert float((fast - slow).norm() / slow.norm()) <= 1e-5
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5 * float(slow.abs().max()))


@pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace.*` is deprecated"
)
def test_auto_picks_the_cpu_backend_except_under_jit_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    cpu = torch.device("cpu")
    assert backends.implementation("lprm_aggregate", cpu, None, reference) is (
        cpu_lprm.lprm_aggregate
    )
    assert backends.implementation("lprm_aggregate", cpu, "reference", reference) is reference
    monkeypatch.setenv(backends.BACKEND_ENV, "reference")
    assert backends.implementation("lprm_aggregate", cpu, None, reference) is reference
    assert backends.implementation("lprm_aggregate", cpu, "cpu", reference) is (
        cpu_lprm.lprm_aggregate
    )
    monkeypatch.delenv(backends.BACKEND_ENV)
    traced = torch.jit.trace(
        lambda v, r: ops.lprm_aggregate(v, r, 1), (torch.randn(1, 2, 4, 4), torch.randn(1, 9, 4, 4))
    )
    assert "sfm::cpu_lprm_aggregate" not in str(traced.graph)


def test_forcing_the_cpu_backend_on_another_device_is_a_clear_error() -> None:
    v, logits = torch.randn(1, 2, 4, 4, device="meta"), torch.randn(1, 9, 4, 4, device="meta")
    with pytest.raises(RuntimeError, match="'cpu' backend cannot run lprm_aggregate on meta"):
        ops.lprm_aggregate(v, logits, 1, backend="cpu")


def test_gated_op_composes_where_the_backend_has_no_fused_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backend with ``lprm_aggregate`` only gets the gate applied around it."""
    plugin = backends.Backend("plain", ops={"lprm_aggregate": reference})
    discovered = {**backends.plugins(), "plain": plugin}
    monkeypatch.setattr(backends, "_loaded", discovered)
    v, logits, gate = torch.randn(1, 2, 5, 4), torch.randn(1, 9, 5, 4), torch.tensor(0.25)
    torch.testing.assert_close(
        ops.lprm_aggregate(v, logits, 2, gate=gate, backend="plain"),
        gated_reference(v, logits, 2, gate),
    )


def test_numba_missing_falls_back_to_plain_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jit, "numba_installed", lambda: False)
    assert _jit.kernels(cpu_lprm.KERNELS) is None
    v, logits = torch.randn(1, 3, 6, 5, dtype=torch.float64), torch.randn(1, 9, 6, 5).double()
    torch.testing.assert_close(cpu_lprm.lprm_aggregate(v, logits, 2), reference(v, logits, 2))


@pytest.mark.parametrize("gated", [True, False])
def test_local_pixel_relation_matches_the_reference_backend(kernels: str, gated: bool) -> None:
    module = LocalPixelRelation(5, (1, 3, 16), gated=gated).double()
    if gated:
        with torch.no_grad():
            module.gates.copy_(torch.tensor([0.4, -0.2, 0.9]))
    values = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    guide = torch.randn(2, 5, 11, 9, dtype=torch.float64)
    values = values.requires_grad_()
    cotangent = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    results = {}
    for backend in ("cpu", "reference"):
        module.backend = backend
        module.zero_grad()
        values.grad = None
        out = module(values, guide)
        (out * cotangent).sum().backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        assert len(grads) == len(list(module.parameters()))
        results[backend] = [out.detach(), values.grad.clone(), *grads]
    for got, expected in zip(results["cpu"], results["reference"], strict=True):
        torch.testing.assert_close(got, expected)
