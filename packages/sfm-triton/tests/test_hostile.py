"""Hostile input to the Triton ops (issue 11, item 1), under the interpreter with tiny shapes.

* Views: every op, forward and backward, on sliced and expanded inputs equals the same op on
  contiguous copies (a backward that wrote its gradient with the input's strides into a dense
  buffer ran past it: an abort under the interpreter, an illegal access on a GPU).
* Properties (hypothesis, derandomized, few examples: the interpreter is slow): every example ends
  in a ValueError/TypeError naming an argument, or a result of the reference's shape and dtype,
  finite in every image whose inputs were finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sfm_core.functional import identity_positions
from sfm_triton.ops.lprm import lprm_aggregate
from sfm_triton.ops.ms_deform_attn import ms_deform_attn
from sfm_triton.ops.nonuniform import nonuniform_upsample
from sfm_triton.ops.resample import resample
from sfm_triton.ops.saliency import saliency_grid

FEW = settings(derandomize=True, max_examples=6, deadline=None, database=None)


def sliced(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view: every other element of a wider last axis."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def expanded(t: torch.Tensor) -> torch.Tensor:
    """A batch of 2 that repeats image 0 with stride 0."""
    return t[:1].expand(2, *t.shape[1:])


def cases() -> dict[str, tuple[Callable[..., torch.Tensor], list[torch.Tensor]]]:
    torch.manual_seed(0)
    levels = torch.tensor([[2, 3], [1, 2]])
    return {
        "saliency_grid": (lambda a: saliency_grid(a, window=1), [torch.randn(2, 1, 2, 3)]),
        "resample": (resample, [torch.randn(2, 3, 3, 4), torch.rand(2, 2, 3, 2) * 2 - 1]),
        "lprm_aggregate": (
            lambda v, a: lprm_aggregate(v, a, 2),
            [torch.randn(2, 3, 3, 4), torch.randn(2, 9, 3, 4)],
        ),
        "nonuniform_upsample": (
            lambda z: nonuniform_upsample(z, identity_positions(2, 3, 4), (5, 6)),
            [torch.randn(2, 3, 3, 4)],
        ),
        "ms_deform_attn": (
            lambda v, loc, w: ms_deform_attn(v, levels, loc, w),
            [torch.randn(2, 8, 2, 3), torch.rand(2, 3, 2, 2, 2, 2), torch.rand(2, 3, 2, 2, 2)],
        ),
    }


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("view", [sliced, expanded], ids=["sliced", "expanded"])
def test_views_forward_and_backward(
    name: str, view: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    op, inputs = cases()[name]
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    copies = [t.detach().clone().requires_grad_() for t in inputs]
    out = op(*[view(leaf) for leaf in leaves])
    expected = op(*[view(copy).contiguous() for copy in copies])
    weight = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out * weight).sum().backward()
    (expected * weight).sum().backward()
    torch.testing.assert_close(out.detach(), expected.detach(), rtol=1e-4, atol=1e-5)
    for leaf, copy in zip(leaves, copies, strict=True):
        torch.testing.assert_close(leaf.grad, copy.grad, rtol=1e-4, atol=1e-5)


def outcome(call: Callable[[], Any], names: list[str]) -> Any:
    try:
        return call()
    except (ValueError, TypeError) as error:
        message = str(error)
    assert any(name in message for name in names), message
    return None


def finite_images(result: torch.Tensor, *inputs: torch.Tensor) -> None:
    """``result`` is finite in every image whose inputs were all finite."""
    if result.numel() == 0:
        return
    clean = torch.ones(result.shape[0], dtype=torch.bool)
    for t in inputs:
        if t.is_floating_point() and t.dim() and t.shape[0] == result.shape[0] and t.numel():
            clean &= torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    finite = torch.isfinite(result.reshape(result.shape[0], -1)).all(dim=1)
    assert bool(finite[clean].all())


SIDE = st.sampled_from([0, 1, 2, 3])
POISON = st.sampled_from([None, float("nan"), float("inf"), 1e30])
DTYPE = st.sampled_from([torch.float32, torch.float16, torch.float64])


def poisoned(shape: tuple[int, ...], dtype: torch.dtype, poison: float | None, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    if poison is not None and t.numel():
        t.view(-1)[seed % t.numel()] = poison
    return t.to(dtype)


@FEW
@given(b=SIDE, h=SIDE, w=SIDE, dtype=DTYPE, poison=POISON, window=st.sampled_from([1, 2, 2000]))
def test_saliency_grid_property(
    b: int, h: int, w: int, dtype: torch.dtype, poison: float | None, window: int
) -> None:
    logits = poisoned((b, 1, h, w), dtype, poison, b + h + w)
    result = outcome(lambda: saliency_grid(logits, window=window), ["logits", "window"])
    if result is not None:
        assert result.shape == (b, h, w, 2)
        assert result.dtype == torch.float32
        finite_images(result, logits)


@FEW
@given(b=SIDE, c=SIDE, h=SIDE, w=SIDE, dtype=DTYPE, poison=POISON)
def test_resample_property(
    b: int, c: int, h: int, w: int, dtype: torch.dtype, poison: float | None
) -> None:
    x = poisoned((b, c, h, w), dtype, poison, b + c)
    grid = poisoned((b, 2, 3, 2), torch.float32, None, 1) * 2 - 1
    result = outcome(lambda: resample(x, grid), ["x", "grid"])
    if result is not None:
        assert result.shape == (b, c, 2, 3)
        assert result.dtype == x.dtype
        finite_images(result, x)


@FEW
@given(b=SIDE, c=SIDE, h=SIDE, w=SIDE, dilation=st.sampled_from([1, 3, 2**31 - 1]), poison=POISON)
def test_lprm_aggregate_property(
    b: int, c: int, h: int, w: int, dilation: int, poison: float | None
) -> None:
    v = poisoned((b, c, h, w), torch.float32, poison, b + w)
    logits = poisoned((b, 9, h, w), torch.float32, None, 2)
    result = outcome(lambda: lprm_aggregate(v, logits, dilation), ["v", "logits", "dilation"])
    if result is not None:
        assert result.shape == v.shape
        finite_images(result, v, logits)


@FEW
@given(b=SIDE, k=SIDE, h=SIDE, w=SIDE, poison=POISON)
def test_nonuniform_upsample_property(b: int, k: int, h: int, w: int, poison: float | None) -> None:
    z = torch.randn(b, k, h, w)
    positions = poisoned((b, 2, h, w), torch.float32, poison, h + w)
    result = outcome(lambda: nonuniform_upsample(z, positions, (3, 2)), ["z", "positions"])
    if result is not None:
        assert result.shape == (b, k, 3, 2)
        finite_images(result, z, positions)


def test_nan_position_spoils_only_its_image() -> None:
    """As the reference: index 0 and NaN weights for that image (the kernels cast NaN to an
    index otherwise), the other images exactly as without it."""
    from sfm_core.functional import nonuniform_upsample as reference

    torch.manual_seed(0)
    positions = identity_positions(3, 3, 4) + 0.01 * torch.randn(3, 2, 3, 4)
    positions[1, 0, 1, 1] = float("nan")
    z = torch.randn(3, 2, 3, 4)
    out = nonuniform_upsample(z, positions, (5, 6))
    assert bool(out[1].isnan().all())
    torch.testing.assert_close(out[[0, 2]], reference(z, positions, (5, 6))[[0, 2]])
