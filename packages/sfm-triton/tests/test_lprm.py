"""The Triton lprm_aggregate against the reference, forward and backward, on tiny awkward inputs.

Under the interpreter the kernels run their first config (pixel blocks of 64, rows in blocks of
32 columns, 16 channels), so widths past 32 and channel counts past 16 exercise several blocks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sfm_core import functional as reference
from sfm_triton.ops.lprm import lprm_aggregate

# (B, K, H, W, dilation): odd sizes, batch 1, non-power-of-two channels, maps smaller than the
# dilation (H=3 with d=4; W=2 with d=16), a single pixel, two column blocks with the clamped
# right-edge columns in both one chunk (d=2) and two chunks (d=20 > 16 columns per chunk).
SHAPES = [
    (1, 3, 5, 7, 1),
    (2, 5, 3, 4, 4),
    (1, 19, 9, 2, 16),
    (2, 3, 6, 5, 2),
    (1, 5, 1, 1, 3),
    (1, 3, 4, 37, 2),
    (1, 2, 3, 37, 20),
]
LAYOUTS = ["contiguous", "channels_last", "strided"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_v(shape: tuple[int, int, int, int], dtype: torch.dtype, layout: str) -> torch.Tensor:
    """Random values in the asked layout (``strided``: every other channel of a wider map)."""
    batch, channels, height, width = shape
    if layout == "strided":
        wide = torch.randn(batch, 2 * channels, height, width + 3).to(dtype)
        return wide[:, ::2, :, 2 : width + 2]
    v = torch.randn(shape).to(dtype)
    return v.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else v


def make_logits(
    batch: int, height: int, width: int, dtype: torch.dtype, layout: str
) -> torch.Tensor:
    """Logits of a few units (a peaked but not one-hot softmax); pixel-major unless contiguous."""
    logits = torch.randn(batch, height, width, 9) * 2.0
    if layout == "contiguous":
        logits = logits.permute(0, 3, 1, 2).contiguous()
    else:
        logits = logits.permute(0, 3, 1, 2)
    return logits.to(dtype)


def reference_run(
    v: torch.Tensor, logits: torch.Tensor, dilation: int, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output and gradients of the float64 reference, in the inputs' dtypes."""
    v64 = v.detach().double().requires_grad_()
    logits64 = logits.detach().double().requires_grad_()
    out = reference.lprm_aggregate(v64, logits64, dilation)
    grad_v, grad_logits = torch.autograd.grad(out, (v64, logits64), grad.double())
    return out.to(v.dtype), grad_v.to(v.dtype), grad_logits.to(logits.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(
    shape: tuple[int, int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
    assert_close: Callable[..., None],
) -> None:
    batch, channels, height, width, dilation = shape
    v = make_v((batch, channels, height, width), dtype, "contiguous").to(device).requires_grad_()
    logits = make_logits(batch, height, width, dtype, "contiguous").to(device).requires_grad_()
    out = lprm_aggregate(v, logits, dilation)
    grad = torch.randn(out.shape).to(dtype).to(device)
    grad_v, grad_logits = torch.autograd.grad(out, (v, logits), grad)
    expected, expected_grad_v, expected_grad_logits = reference_run(v, logits, dilation, grad)
    assert out.dtype == grad_v.dtype == dtype
    assert_close(out, expected, msg="out")
    assert_close(grad_v, expected_grad_v, msg="grad_v")
    assert_close(grad_logits, expected_grad_logits, msg="grad_logits")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_layout(layout: str, device: torch.device, assert_close: Callable[..., None]) -> None:
    v = make_v((2, 5, 6, 7), torch.float32, layout).to(device).requires_grad_()
    logits = make_logits(2, 6, 7, torch.float32, layout).to(device).requires_grad_()
    out = lprm_aggregate(v, logits, 2)
    grad = torch.randn(out.shape, device=device)
    grad_v, grad_logits = torch.autograd.grad(out, (v, logits), grad)
    expected, expected_grad_v, expected_grad_logits = reference_run(v, logits, 2, grad)
    assert_close(out, expected)
    assert_close(grad_v, expected_grad_v)
    assert_close(grad_logits, expected_grad_logits)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_mixed_dtypes_compute_in_float32(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    v = torch.randn(1, 3, 5, 6).half().to(device)
    logits = torch.randn(1, 9, 5, 6, device=device)
    out = lprm_aggregate(v, logits, 1)
    assert out.dtype == torch.float16
    assert_close(out, reference.lprm_aggregate(v.double(), logits.double(), 1).half())


@pytest.mark.parametrize("needs", ["v", "logits"])
def test_one_gradient_at_a_time(
    needs: str, device: torch.device, assert_close: Callable[..., None]
) -> None:
    v = torch.randn(1, 4, 5, 3, device=device).requires_grad_(needs == "v")
    logits = torch.randn(1, 9, 5, 3, device=device).requires_grad_(needs == "logits")
    out = lprm_aggregate(v, logits, 3)
    grad = torch.randn(out.shape, device=device)
    (computed,) = torch.autograd.grad(out, (v if needs == "v" else logits,), grad)
    _, expected_grad_v, expected_grad_logits = reference_run(v, logits, 3, grad)
    assert_close(computed, expected_grad_v if needs == "v" else expected_grad_logits)


def test_dominant_centre_tap_is_the_identity(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    v = torch.randn(1, 3, 4, 5, device=device)
    logits = torch.randn(1, 9, 4, 5, device=device)
    logits[:, 4] += 100.0
    assert_close(lprm_aggregate(v, logits, 2), v)


def test_flops_are_counted(device: torch.device) -> None:
    v = torch.randn(1, 3, 4, 5, device=device, requires_grad=True)
    logits = torch.randn(1, 9, 4, 5, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        lprm_aggregate(v, logits, 1).sum().backward()
    # 9 MACs per output element forward, twice that backward (grad_v and grad_logits), 2 FLOPs/MAC.
    assert counter.get_total_flops() == 2 * 9 * v.numel() * 3


def test_opcheck(device: torch.device) -> None:
    v = torch.randn(1, 3, 4, 5, device=device, requires_grad=True)
    logits = torch.randn(1, 9, 4, 5, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.sfm.lprm_aggregate.default, (v, logits, 2))
    grad = torch.randn(1, 3, 4, 5, device=device)
    for needs in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(  # the backward is not differentiable itself
            torch.ops.sfm.lprm_aggregate_backward.default,
            (grad, v.detach(), logits.detach(), 2, *needs),
        )


@pytest.mark.no_runtime
@pytest.mark.parametrize(
    ("v", "logits", "dilation", "error", "match"),
    [
        (torch.ones(1, 2, 4, 4), torch.ones(1, 8, 4, 4), 1, ValueError, "9 channels"),
        (torch.ones(1, 2, 4, 4), torch.ones(1, 9, 4, 5), 1, ValueError, "share H, W"),
        (torch.ones(1, 2, 4, 4), torch.ones(2, 9, 4, 4), 1, ValueError, "batch sizes"),
        (torch.ones(1, 2, 4, 4), torch.ones(1, 9, 4, 4), 0, ValueError, "dilation must be"),
        (torch.ones(2, 4, 4), torch.ones(1, 9, 4, 4), 1, ValueError, "v must be a 4-D"),
        (
            torch.ones(1, 2, 4, 4, dtype=torch.float64),
            torch.ones(1, 9, 4, 4),
            1,
            TypeError,
            "v must have dtype float16, bfloat16, float32 in sfm_triton",
        ),
        (
            torch.ones(1, 2, 4, 4),
            torch.ones(1, 9, 4, 4, dtype=torch.int32),
            1,
            TypeError,
            "logits must have a floating dtype",
        ),
    ],
)
def test_bad_input(
    v: torch.Tensor, logits: torch.Tensor, dilation: int, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        lprm_aggregate(v, logits, dilation)


@pytest.mark.no_runtime
def test_cpu_without_the_interpreter_is_refused() -> None:
    """A fresh process without TRITON_INTERPRET: CPU tensors get sfm_triton's error, not Triton's."""
    code = (
        "import torch\n"
        "from sfm_triton.ops.lprm import lprm_aggregate\n"
        "try:\n"
        "    lprm_aggregate(torch.ones(1, 2, 3, 3), torch.ones(1, 9, 3, 3), 1)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "v is on cpu" in result.stdout
    assert "TRITON_INTERPRET=1" in result.stdout
