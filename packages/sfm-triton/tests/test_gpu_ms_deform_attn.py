"""ms_deform_attn on a GPU: Mask2Former's encoder shapes, bf16, strided inputs, determinism.

Run on the GPU machine: ``python -m pytest -m gpu packages/sfm-triton/tests``. The reference runs
in fp64 on the same device; gradients (sums of many terms) are compared relative to their
largest entry (:func:`sfm_triton.testing.assert_close_to_scale`).
"""

from __future__ import annotations

import pytest
import torch

from sfm_core import functional as reference
from sfm_triton.ops.ms_deform_attn import ms_deform_attn
from sfm_triton.testing import assert_close, assert_close_to_scale, deformable_attention_inputs

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Mask2Former's pixel decoder at a 512² crop (strides 32, 16, 8), and at Cityscapes' 512x1024.
ADE20K = [(64, 64), (32, 32), (16, 16)]
CITYSCAPES = [(64, 128), (32, 64), (16, 32)]
BATCH, HEADS, CHANNELS, POINTS = 2, 8, 32, 4


def off_centres(
    locations: torch.Tensor, levels: list[tuple[int, int]], tolerance: float = 1e-4
) -> torch.Tensor:
    """Move coordinates within ``tolerance`` px of a pixel centre by 1e-3 px.

    The bilinear derivative jumps there, where fp32 and the fp64 reference may round to
    different sides; the CPU tests cover exact centres with an fp32 reference.
    """
    sizes = torch.tensor([[w, h] for h, w in levels], device=locations.device)
    sizes = sizes.view(1, 1, 1, len(levels), 1, 2).to(torch.float64)
    pixels = locations.double() * sizes - 0.5
    near = (pixels - pixels.round()).abs() < tolerance
    return torch.where(near, locations + (1e-3 / sizes).to(locations.dtype), locations)


def run(
    fn: object, inputs: tuple[torch.Tensor, ...], grad_out: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    value, shapes, locations, weights = inputs
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    out = fn(leaves[0], shapes, leaves[1], leaves[2])  # type: ignore[operator]
    return (out, *torch.autograd.grad(out, leaves, grad_out.to(out.dtype)))


def cast_inputs(inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("levels", [ADE20K, CITYSCAPES], ids=["ade20k-512", "cityscapes"])
def test_matches_reference(levels: list[tuple[int, int]], dtype: torch.dtype) -> None:
    value, shapes, locations, weights = deformable_attention_inputs(
        BATCH, levels, HEADS, CHANNELS, POINTS, device="cuda"
    )
    inputs = cast_inputs((value, shapes, off_centres(locations, levels), weights), dtype)
    grad_out = torch.randn(BATCH, value.shape[1], HEADS * CHANNELS, device="cuda").to(dtype)
    got = run(ms_deform_attn, inputs, grad_out)
    expected = run(reference.ms_deform_attn, cast_inputs(inputs, torch.float64), grad_out)
    assert_close(got[0], expected[0].to(dtype), msg="output")
    names = ("value", "locations", "weights")
    for name, grad, wanted in zip(names, got[1:], expected[1:], strict=True):
        assert grad.dtype == dtype
        assert_close_to_scale(grad, wanted.to(dtype), msg=f"grad of {name}")


def test_strided_inputs_equal_dense_ones() -> None:
    """Sliced, expanded and transposed views give bit-identical results to dense copies."""
    value, shapes, locations, weights = deformable_attention_inputs(
        BATCH, ADE20K, HEADS, CHANNELS, POINTS, device="cuda"
    )
    wide = torch.randn(*value.shape[:3], 3 * CHANNELS, device="cuda")
    wide[..., 1::3] = value
    strided_value = wide[..., 1::3]
    shared = locations[:, :, :1].expand_as(locations)
    strided_weights = weights.transpose(1, 2).contiguous().transpose(1, 2)
    grad_out = torch.randn(HEADS * CHANNELS, value.shape[1], BATCH, device="cuda").permute(2, 1, 0)
    strided = run(ms_deform_attn, (strided_value, shapes, shared, strided_weights), grad_out)
    dense = run(
        ms_deform_attn,
        (value, shapes, shared.contiguous(), weights),
        grad_out.contiguous(),
    )
    for a, b in zip(strided, dense, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(wide[..., 1::3], value), "an input was written to"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_is_deterministic(dtype: torch.dtype) -> None:
    """No atomics: two backward passes give bit-identical gradients."""
    inputs = cast_inputs(
        deformable_attention_inputs(BATCH, ADE20K, HEADS, CHANNELS, POINTS, device="cuda"), dtype
    )
    grad_out = torch.randn(BATCH, inputs[0].shape[1], HEADS * CHANNELS, device="cuda").to(dtype)
    first = run(ms_deform_attn, inputs, grad_out)
    second = run(ms_deform_attn, inputs, grad_out)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_spatial_shapes_on_the_device_work_too() -> None:
    value, shapes, locations, weights = deformable_attention_inputs(
        1, ADE20K, HEADS, CHANNELS, POINTS, device="cuda"
    )
    assert torch.equal(
        ms_deform_attn(value, shapes.cuda(), locations, weights),
        ms_deform_attn(value, shapes, locations, weights),
    )
