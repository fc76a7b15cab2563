"""The torch.library registration: opcheck, torch.compile(fullgraph=True), FLOP counters."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.library import opcheck
from torch.utils.flop_counter import FlopCounterMode

from sfm_core.flops import resample_backward_macs, resample_macs, saliency_grid_macs
from sfm_triton.ops.resample import resample
from sfm_triton.ops.saliency import saliency_grid

WINDOW = 2


class TinyARS(torch.nn.Module):
    """Saliency grid from one channel of the input, then resampling: ARS's two kernels in a row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = saliency_grid(x[:, :1], window=WINDOW)
        return resample(x, grid)


def ars_inputs(device: torch.device) -> torch.Tensor:
    return (2.0 * torch.randn(1, 3, 5, 6, device=device)).requires_grad_()


def test_opcheck_every_op(device: torch.device) -> None:
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of all four ops."""
    x = torch.randn(1, 3, 5, 6, device=device, requires_grad=True)
    grid = (torch.rand(1, 4, 3, 2, device=device) * 2 - 1).requires_grad_()
    logits = torch.randn(1, 1, 5, 6, device=device, requires_grad=True)
    stats = torch.ops.sfm.saliency_grid(logits.detach(), WINDOW, 3.0, 1e-3)[1]
    cases = [
        (torch.ops.sfm.resample.default, (x, grid)),
        (
            torch.ops.sfm.resample.default,
            (x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(), grid),
        ),
        (torch.ops.sfm.saliency_grid.default, (logits, WINDOW, 3.0, 1e-3)),
        (
            torch.ops.sfm.resample_backward.default,
            (torch.randn(1, 3, 4, 3, device=device), x.detach(), grid.detach(), True, True),
        ),
        (
            torch.ops.sfm.saliency_grid_backward.default,
            (torch.randn(1, 5, 6, 2, device=device), logits.detach(), stats, WINDOW, 3.0, 1e-3),
        ),
    ]
    for op, args in cases:
        results = opcheck(op, args)
        assert set(results.values()) == {"SUCCESS"}, (op, results)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager(
    device: torch.device, assert_close: Callable[..., None]
) -> None:
    model = TinyARS()
    x = ars_inputs(device)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    expected = model(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    assert_close(out, expected)
    assert_close(grad, expected_grad)


def test_flop_counter_mode_counts_forward_and_backward(device: torch.device) -> None:
    x = ars_inputs(device)
    with FlopCounterMode(display=False) as counter:
        TinyARS()(x).sum().backward()
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    assert set(counts) == {
        "sfm.resample",
        "sfm.resample_backward",
        "sfm.saliency_grid",
        "sfm.saliency_grid_backward",
    }
    grid_shape = (1, 5, 6, 2)
    assert counts["sfm.resample"] == 2 * resample_macs(x.shape, grid_shape)
    assert counts["sfm.resample_backward"] == 2 * resample_backward_macs(x.shape, grid_shape)
    assert counts["sfm.saliency_grid"] == 2 * saliency_grid_macs((1, 1, 5, 6), WINDOW)
    assert counts["sfm.saliency_grid_backward"] == 2 * saliency_grid_macs((1, 1, 5, 6), WINDOW)


def test_fvcore_handles_count_the_ops(device: torch.device) -> None:
    """fvcore (torch.jit.trace) sees ``sfm::<op>`` nodes: 0 and listed without handles, MACs with."""
    jit_analysis = pytest.importorskip("fvcore.nn")
    from sfm_core.flops import fvcore_handles

    x = ars_inputs(device).detach()
    plain = jit_analysis.FlopCountAnalysis(TinyARS(), (x,))
    plain.total()
    assert set(plain.unsupported_ops()) == {"sfm::saliency_grid", "sfm::resample"}

    counted = jit_analysis.FlopCountAnalysis(TinyARS(), (x,)).set_op_handle(**fvcore_handles())
    by_operator = counted.by_operator()
    assert by_operator["saliency_grid"] == saliency_grid_macs((1, 1, 5, 6), WINDOW)
    assert by_operator["resample"] == resample_macs(x.shape, (1, 5, 6, 2))
    assert not counted.unsupported_ops()
