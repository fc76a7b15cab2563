"""The cpu backend's box_high_pass (ARS steps 1a + 1b in one pass) against the reference."""

from __future__ import annotations

import pytest
import torch

from sfm_core import backends, ops
from sfm_core.cpu import _jit
from sfm_core.cpu import high_pass as cpu_op
from sfm_core.functional import box_high_pass as reference
from sfm_core.nn import AdaptiveResampling
from sfm_core.nn.generators import BoxAverage, LearnableHighPass


@pytest.fixture(autouse=True)
def _every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel on every map size (in use it starts at 64x64 pixels)."""
    monkeypatch.setattr(cpu_op, "MIN_PIXELS", 0)


AWKWARD = [(2, 3, 7, 5), (1, 2, 1, 6), (2, 1, 5, 1), (1, 1, 1, 1), (2, 2, 2, 3), (1, 3, 4, 2)]


@pytest.mark.parametrize("shape", AWKWARD)
def test_gradcheck_against_the_reference(shape: tuple[int, ...]) -> None:
    assert _jit.kernels(cpu_op.KERNELS) is not None  # the test extra installs numba
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(shape[1], 1, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(cpu_op.box_high_pass(x, kernel), reference(x, kernel))
    assert torch.autograd.gradcheck(cpu_op.box_high_pass, (x, kernel), fast_mode=True)


def test_reference_is_the_generators_two_modules() -> None:
    x = torch.randn(2, 4, 9, 6, dtype=torch.float64)
    high_pass = LearnableHighPass(4).double()
    with torch.no_grad():
        high_pass.weight.normal_()
    torch.testing.assert_close(reference(x, high_pass.kernel(x.dtype)), high_pass(BoxAverage()(x)))


def test_float32_at_resnet_sizes_non_contiguous_and_empty_batch() -> None:
    for shape in [(2, 256, 64, 64), (0, 3, 5, 4)]:
        x = torch.randn(*shape).transpose(2, 3)
        kernel = torch.randn(shape[1], 1, 3, 3)
        got = cpu_op.box_high_pass(x, kernel)
        expected = reference(x, kernel)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if x.numel():
            grad = torch.randn_like(expected)
            leaves = [x.requires_grad_(), kernel.requires_grad_()]
            fast_grads = torch.autograd.grad(cpu_op.box_high_pass(*leaves), leaves, grad)
            slow_grads = torch.autograd.grad(reference(*leaves), leaves, grad)
            for fast, slow in zip(fast_grads, slow_grads, strict=True):
                assert float((fast - slow).norm() / slow.norm()) <= 1e-5


def test_without_numba_the_reference_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_jit.JIT_ENV, "0")
    x, kernel = torch.randn(1, 2, 5, 4), torch.randn(2, 1, 3, 3)
    assert torch.equal(cpu_op.box_high_pass(x, kernel), reference(x, kernel))


def test_bad_kernel_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"kernel must be \[C, 1, 3, 3\] with C = 2"):
        ops.box_high_pass(torch.randn(1, 2, 4, 4), torch.randn(3, 1, 3, 3))


@pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace.*` is deprecated"
)
def test_auto_uses_it_for_cpu_tensors_but_not_under_jit_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    cpu = torch.device("cpu")
    assert backends.implementation("box_high_pass", cpu, None, reference) is cpu_op.box_high_pass
    traced = torch.jit.trace(ops.box_high_pass, (torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3)))
    assert "avg_pool2d" in str(traced.graph)


def test_ars_matches_the_reference_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole module, forward and backward, with the generator's projection switched on."""
    ars = AdaptiveResampling(6).double()
    with torch.no_grad():
        ars.generator.project.weight.normal_(0, 0.05)
        ars.generator.high_pass.weight.normal_()
    x = torch.randn(2, 6, 13, 10, dtype=torch.float64)
    results = {}
    for backend in ("auto", "reference"):
        monkeypatch.setenv(backends.BACKEND_ENV, backend)
        ars.zero_grad()
        leaf = x.clone().requires_grad_()
        out = ars(leaf)
        (out.features.square().sum() + out.logits.sum()).backward()
        grads = [p.grad.clone() for p in ars.parameters() if p.grad is not None]
        results[backend] = [out.features.detach(), out.grid.detach(), leaf.grad, *grads]
    for got, expected in zip(results["auto"], results["reference"], strict=True):
        torch.testing.assert_close(got, expected)
