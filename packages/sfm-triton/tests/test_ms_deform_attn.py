"""The Triton ms_deform_attn against the reference, forward and backward, on tiny awkward inputs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.library import opcheck
from torch.utils.flop_counter import FlopCounterMode

from sfm_core import functional as reference
from sfm_core import ops
from sfm_core.flops import ms_deform_attn_backward_macs, ms_deform_attn_macs
from sfm_triton.ops.ms_deform_attn import ms_deform_attn
from sfm_triton.testing import assert_close_to_scale

# Odd sizes, a 1x1 level, and (x, y) different in every level so a swapped axis shows.
LEVELS = [(3, 4), (2, 5), (1, 1)]
BATCH, QUERIES, HEADS, CHANNELS, POINTS = 2, 6, 2, 3, 2
# Dyadic edge cases: map edges, the first pixel centre of a 4-wide level, half a pixel outside.
EDGES = [0.0, 1.0, 0.125, -0.125, 1.125, 0.5]


def make_inputs(
    dtype: torch.dtype, device: torch.device, *, layout: str = "contiguous"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs in ``dtype``, locations in [-0.3, 1.3] plus the edge cases of ``EDGES``.

    ``strided``: value is every other channel of a wider tensor, the locations are shared by the
    heads through an expanded (stride 0) view, the weights and spatial_shapes are transposed
    copies.
    """
    rows = sum(h * w for h, w in LEVELS)
    levels = len(LEVELS)
    locations = torch.rand(BATCH, QUERIES, HEADS, levels, POINTS, 2) * 1.6 - 0.3
    edges = torch.tensor(EDGES)
    locations[0, : len(EDGES), 0, :, 0, 0] = edges[:, None]
    locations[1, : len(EDGES), 1, :, 1, 1] = edges.flip(0)[:, None]
    weights = torch.rand(BATCH, QUERIES, HEADS, levels, POINTS)
    if layout == "strided":
        value = torch.randn(BATCH, rows, HEADS, 2 * CHANNELS).to(dtype)[..., ::2]
        locations = locations[:, :, :1].expand(-1, -1, HEADS, -1, -1, -1)
        weights = weights.transpose(1, 3).contiguous().transpose(1, 3)
        assert not value.is_contiguous()
        assert not locations.is_contiguous()
        assert not weights.is_contiguous()
    else:
        value = torch.randn(BATCH, rows, HEADS, CHANNELS).to(dtype)
    shapes = torch.tensor(LEVELS, dtype=torch.int64)
    if layout == "strided":
        shapes = shapes.t().contiguous().t()
        assert not shapes.is_contiguous()
    return value.to(device), shapes, locations.to(dtype).to(device), weights.to(dtype).to(device)


def reference_run(
    inputs: tuple[torch.Tensor, ...], grad_out: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Output and the three gradients of the reference in fp32, returned in the inputs' dtypes.

    fp32 like the kernel, not fp64: at locations that land exactly on a pixel centre (tested on
    purpose) the bilinear derivative jumps, and an fp64 run could fall on the other side.
    """
    value, shapes, locations, weights = inputs
    leaves = [t.detach().float().requires_grad_() for t in (value, locations, weights)]
    out = reference.ms_deform_attn(leaves[0], shapes, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad_out.float())
    return (
        out.to(value.dtype),
        *(grad.to(t.dtype) for grad, t in zip(grads, (value, locations, weights), strict=True)),
    )


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_reference(
    dtype: torch.dtype, layout: str, device: torch.device, assert_close: Callable[..., None]
) -> None:
    value, shapes, locations, weights = make_inputs(dtype, device, layout=layout)
    leaves = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    out = ms_deform_attn(value, shapes, locations, weights)
    # A transposed copy: the kernels read grad_out through its strides too.
    grad_out = torch.randn(out.shape[::-1], device=device).to(dtype).transpose(0, 2)
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected, *expected_grads = reference_run((value, shapes, locations, weights), grad_out)

    assert out.shape == (BATCH, QUERIES, HEADS * CHANNELS)
    assert out.dtype == dtype
    assert_close(out, expected, msg="output")
    names = ("value", "locations", "weights")
    for name, grad, wanted in zip(names, grads, expected_grads, strict=True):
        assert grad.dtype == dtype
        assert_close_to_scale(grad, wanted, msg=f"grad of {name}")


@pytest.mark.parametrize("wanted", [0, 1, 2], ids=["value", "locations", "weights"])
def test_one_sided_gradients(
    wanted: int, device: torch.device, assert_close: Callable[..., None]
) -> None:
    """Only the requested gradient is computed, and it equals the reference's."""
    inputs = make_inputs(torch.float32, device)
    target = (inputs[0], inputs[2], inputs[3])[wanted].requires_grad_()
    out = ms_deform_attn(*inputs)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, target, grad_out)
    assert_close(grad, reference_run(inputs, grad_out)[1 + wanted])


def test_points_outside_every_map_read_zero(device: torch.device) -> None:
    value, shapes, locations, weights = make_inputs(torch.float32, device)
    far = (locations.detach() + 2.0).requires_grad_()
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, far, weights)
    assert out.abs().max() == 0
    grad_value, grad_far = torch.autograd.grad(out, (value, far), torch.ones_like(out))
    assert grad_value.abs().max() == 0
    assert grad_far.abs().max() == 0


def test_dispatched_through_sfm_core(device: torch.device) -> None:
    inputs = make_inputs(torch.float32, device)
    torch.testing.assert_close(
        ops.ms_deform_attn(*inputs, backend="triton"), ms_deform_attn(*inputs), rtol=0, atol=0
    )


def test_opcheck(device: torch.device) -> None:
    """Schema, fake kernels, autograd registration and AOT dispatch of both ops.

    On the smallest inputs: opcheck runs each op a dozen times, slow under the interpreter.
    """
    shapes = torch.tensor([[2, 3], [1, 1]], device=device)
    value = torch.randn(1, 7, 1, 2, device=device)
    locations = torch.rand(1, 2, 1, 2, 1, 2, device=device)
    weights = torch.rand(1, 2, 1, 2, 1, device=device)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    grad = torch.randn(1, 2, 2, device=device)
    cases = [
        (torch.ops.sfm.ms_deform_attn.default, (leaves[0], shapes, leaves[1], leaves[2])),
        (
            torch.ops.sfm.ms_deform_attn_backward.default,
            (grad, value, shapes, locations, weights, True, True, True),
        ),
    ]
    for op, args in cases:
        results = opcheck(op, args)
        assert set(results.values()) == {"SUCCESS"}, (op, results)


def test_flop_counter_and_fvcore(device: torch.device) -> None:
    value, shapes, locations, weights = make_inputs(torch.float32, device)
    value.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        ms_deform_attn(value, shapes, locations, weights).sum().backward()
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    assert counts == {
        "sfm.ms_deform_attn": 2 * ms_deform_attn_macs(value.shape, locations.shape),
        "sfm.ms_deform_attn_backward": 2
        * ms_deform_attn_backward_macs(value.shape, locations.shape),
    }

    jit_analysis = pytest.importorskip("fvcore.nn")
    from sfm_core.flops import fvcore_handles

    class Attend(torch.nn.Module):
        def forward(self, v: torch.Tensor, loc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return ms_deform_attn(v, shapes, loc, w)

    counted = jit_analysis.FlopCountAnalysis(
        Attend(), (value.detach(), locations, weights)
    ).set_op_handle(**fvcore_handles())
    assert counted.by_operator()["ms_deform_attn"] == ms_deform_attn_macs(
        value.shape, locations.shape
    )
    assert "sfm::ms_deform_attn" not in counted.unsupported_ops()


@pytest.mark.no_runtime
def test_refuses_float64_and_names_bad_arguments() -> None:
    value, shapes, locations, weights = make_inputs(torch.float32, torch.device("cpu"))
    with pytest.raises(TypeError, match=r"value must have dtype .*got torch.float64"):
        ms_deform_attn(value.double(), shapes, locations, weights)
    with pytest.raises(TypeError, match=r"attention_weights must have dtype"):
        ms_deform_attn(value, shapes, locations, weights.double())
    with pytest.raises(ValueError, match=r"value must have S = sum"):
        ms_deform_attn(value[:, 1:], shapes, locations, weights)
    with pytest.raises(ValueError, match=r"sampling_locations must be \[B, Q, heads, L, P, 2\]"):
        ms_deform_attn(value, shapes, locations[:, :, :, :2], weights)
    with pytest.raises(TypeError, match=r"spatial_shapes must be int64"):
        ms_deform_attn(value, shapes.int(), locations, weights)
