"""A wrapped model against hand computation, and under jit.trace, fvcore, compile, FlopCounterMode."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sfm_core.flops import fvcore_handles, gather_macs, resample_backward_macs, resample_macs
from sfm_core.functional import identity_positions, rasterize
from sfm_core.functional.nonuniform import gather
from sfm_core.insertion import SFMModel, insert_ars

aten = torch.ops.aten
# DeprecationWarning on torch 2.13, FutureWarning from torch 2.15: any category.
JIT_DEPRECATED = "ignore:`torch.jit.trace.*` is deprecated"
# The reference's argument checks compare sizes, which jit.trace reports as baked-in constants.
TRACER_WARNINGS = "ignore::torch.jit.TracerWarning"


class TwoBranch(nn.Module):
    """A residual-style block whose two branches both downsample: a strided conv and a pool."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.pool = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.pool(x)


class TwoLevel(nn.Module):
    """stem -> block1 -> block2, returning the three maps (a multi-level backbone)."""

    def __init__(self, channels: int = 2, stem: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, channels, 3, padding=1) if stem else nn.Identity()
        self.block1 = TwoBranch(channels)
        self.block2 = TwoBranch(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.stem(x)
        b = self.block1(a)
        return [a, b, self.block2(b)]


def nudge(wrapper: SFMModel) -> None:
    with torch.no_grad():
        for ars in wrapper.sfm_ars.values():
            for parameter in ars.generator.project.parameters():
                parameter.copy_(torch.randn_like(parameter))


def sample(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(values, size=size, mode="bilinear", align_corners=False)


def wrapped_two_level(dtype: torch.dtype = torch.float64, stem: bool = True) -> SFMModel:
    torch.manual_seed(0)
    model = TwoLevel(stem=stem).to(dtype).eval()
    example = torch.randn(1, 2, 20, 28, dtype=dtype)
    wrapper = insert_ars(model, ["block1", "block2"], example_input=example)
    nudge(wrapper)
    return wrapper.eval()


def test_composite_positions_by_hand() -> None:
    """Positions of both sites and of every output level follow METHOD.md §2, computed here
    with grid_sample and interpolate directly; both branches of block1 see one warped map."""
    wrapper = wrapped_two_level(stem=False)
    image = torch.randn(2, 2, 20, 28, dtype=torch.float64)
    seen: dict[str, torch.Tensor] = {}
    for branch in ("conv", "pool"):
        wrapper.model.block1.get_submodule(branch).register_forward_pre_hook(
            lambda module, args, branch=branch: seen.__setitem__(branch, args[0])
        )
    outputs = wrapper(image)
    trace = wrapper.sfm_trace()
    first, second = trace.sites
    assert seen["conv"] is seen["pool"]  # both branches see the one warped map
    uniform = identity_positions(2, 20, 28, dtype=torch.float64)
    positions1 = sample(uniform, first.grid.detach())
    torch.testing.assert_close(first.positions, positions1, rtol=0, atol=1e-12)
    positions2 = sample(resize(positions1, (10, 14)), second.grid.detach())
    torch.testing.assert_close(second.positions, positions2, rtol=0, atol=1e-12)
    assert (first.positions - uniform).abs().max() > 1e-2  # the ARS really warped
    levels = trace.levels
    torch.testing.assert_close(levels[0], uniform, rtol=0, atol=0)
    torch.testing.assert_close(levels[1], resize(positions1, (10, 14)), rtol=0, atol=1e-12)
    torch.testing.assert_close(levels[2], resize(positions2, (5, 7)), rtol=0, atol=1e-12)
    assert [tuple(level.shape[-2:]) for level in levels] == [
        tuple(out.shape[-2:]) for out in outputs
    ]


def test_identity_image_warps_to_its_positions() -> None:
    """Feeding pixel coordinates as the image: the map ARS hands on equals its positions."""
    wrapper = wrapped_two_level(stem=False)
    image = identity_positions(1, 20, 28, dtype=torch.float64)
    seen: list[torch.Tensor] = []
    wrapper.model.block1.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    wrapper(image)
    site = wrapper.sfm_trace().sites[0]
    assert (site.positions - image).abs().max() > 1e-3
    torch.testing.assert_close(seen[0], site.positions, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings(JIT_DEPRECATED, TRACER_WARNINGS)
def test_jit_trace_and_fvcore_count() -> None:
    fvcore = pytest.importorskip("fvcore.nn")
    wrapper = wrapped_two_level(torch.float32)
    x = torch.randn(2, 2, 20, 28)
    traced = torch.jit.trace(wrapper, (x,))
    for left, right in zip(traced(x), wrapper(x), strict=True):
        torch.testing.assert_close(left, right)
    counted = fvcore.FlopCountAnalysis(wrapper, x).set_op_handle(**fvcore_handles())
    plain = fvcore.FlopCountAnalysis(TwoLevel().eval(), x)
    counted.unsupported_ops_warnings(False)
    plain.unsupported_ops_warnings(False)
    # The ARS generators' convolutions come on top of the plain model's, and fvcore counts the
    # resampling of both sites (4 MACs per output value, as sfm_core.flops counts it).
    assert counted.total() > plain.total() > 0
    sites = [((2, 2, 20, 28), (2, 20, 28, 2)), ((2, 2, 10, 14), (2, 10, 14, 2))]
    expected = sum(resample_macs(x_shape, g_shape) for x_shape, g_shape in sites)
    assert counted.by_operator()["grid_sampler"] == expected


def test_compile_fullgraph_and_the_trace_of_the_compiled_call() -> None:
    wrapper = wrapped_two_level(torch.float32)
    x = torch.randn(2, 2, 20, 28)
    expected = wrapper(x)
    grids = [site.grid for site in wrapper.sfm_trace().sites]
    compiled = torch.compile(wrapper, fullgraph=True, backend="eager")
    for left, right in zip(compiled(x * 1), expected, strict=True):
        torch.testing.assert_close(left, right)
    trace = wrapper.sfm_trace()
    assert [site.name for site in trace.sites] == ["block1", "block2"]
    for site, grid in zip(trace.sites, grids, strict=True):
        assert site.grid is not grid  # recorded by the compiled call
        torch.testing.assert_close(site.grid, grid)


def flops_by_op(run: Any) -> dict[Any, int]:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return dict(counter.get_flop_counts()["Global"])


def test_flop_counter_counts_grid_sample_of_every_site() -> None:
    wrapper = wrapped_two_level(torch.float32)
    wrapper.train()
    x = torch.randn(2, 2, 20, 28)
    counts = flops_by_op(lambda: torch.stack([o.sum() for o in wrapper(x)]).sum().backward())
    shapes = [((2, 2, 20, 28), (2, 20, 28, 2)), ((2, 2, 10, 14), (2, 10, 14, 2))]
    forward = sum(2 * resample_macs(x_shape, g_shape) for x_shape, g_shape in shapes)
    backward = sum(2 * resample_backward_macs(x_shape, g_shape) for x_shape, g_shape in shapes)
    assert counts[aten.grid_sampler_2d] == forward
    assert counts[aten.grid_sampler_2d_backward] == backward
    assert counts[aten.convolution] > 0  # the generators' convolutions, counted by PyTorch


def test_flop_counter_counts_the_gather_of_nonuniform_upsampling() -> None:
    z = torch.randn(2, 5, 6, 7, requires_grad=True)
    index, weights = rasterize(identity_positions(2, 6, 7), (11, 13))
    weights = weights.float().requires_grad_(True)
    counts = flops_by_op(lambda: gather(z, index, weights).sum().backward())
    macs = gather_macs(tuple(z.shape), tuple(index.shape))
    assert counts[aten._embedding_bag] == 2 * macs
    assert counts[aten._embedding_bag_backward] == 2 * macs
    assert counts[aten._embedding_bag_per_sample_weights_backward] == 2 * macs
