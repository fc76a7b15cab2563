"""Bilinear resampling with border padding (ARS step 4) as Triton kernels.

Same contract as :func:`sfm_core.functional.resample` (``F.grid_sample`` bilinear, border,
``align_corners=False``). The kernels take every stride as an argument, so NCHW, channels-last
and other strided ``x`` are read in place; the output keeps ``x``'s memory format. One program
owns a block of output pixels and a block of channels: the pixel's coordinates and weights are
computed once and broadcast over channels, so in channels-last every corner load is a contiguous
channel vector.

Backward: grad_grid is reduced over channels in registers by the program that owns the pixel
(single writer); grad_x is a scatter, done with channel-vector atomics into an fp32 buffer (one
atomic per [pixel, channel] tile element, never a per-thread loop over channels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from sfm_core._checks import check_nonempty_map, check_same_batch, check_tensor
from sfm_core.flops import resample_backward_macs, resample_macs
from sfm_core.functional.resample import check_grid
from sfm_triton._runtime import autotune_configs, cdiv, check_device, check_dtype

# Tiles of 4-8 elements per thread: bigger ones spill on sm_90 (the int64 corner addresses of
# every element stay live); checked by compiling every config ahead of time in the tests.
_FORWARD_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 32}, num_warps=8),
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=8),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=8),
        triton.Config({"BLOCK_P": 16, "BLOCK_C": 128}, num_warps=8),
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 64}, num_warps=16),
    ]
)
_BACKWARD_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_P": 16, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 8, "BLOCK_C": 64}, num_warps=4),
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=16),
    ]
)
# Keys: channel count, layout, and the output size bucketed to a power of two, so a new crop
# size re-tunes only when it changes the bucket.
_KEY = ["C", "CHANNELS_LAST", "PIXEL_BUCKET"]


@triton.jit
def _source_corners(grid_ptr, n, ho, wo, sgn, sgh, sgw, sgc, H, W, mask):
    """Corner indices, weights and clip masks of ``grid_sample``'s unnormalise-and-clip."""
    offset = n * sgn + ho * sgh + wo * sgw
    gx = tl.load(grid_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    gy = tl.load(grid_ptr + offset + sgc, mask=mask, other=0.0).to(tl.float32)
    ix = ((gx + 1.0) * W - 1.0) / 2.0
    iy = ((gy + 1.0) * H - 1.0) / 2.0
    # Border padding clips the coordinate; its gradient is 0 at and beyond the clip limits.
    inside_x = (ix > 0.0) & (ix < W - 1.0)
    inside_y = (iy > 0.0) & (iy < H - 1.0)
    ix = tl.minimum(tl.maximum(ix, 0.0), W - 1.0)
    iy = tl.minimum(tl.maximum(iy, 0.0), H - 1.0)
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    wx1 = ix - x0f
    wy1 = iy - y0f
    x0 = x0f.to(tl.int64)
    y0 = y0f.to(tl.int64)
    return x0, y0, wx1, wy1, inside_x, inside_y


@triton.autotune(configs=_FORWARD_CONFIGS, key=_KEY)
@triton.jit
def _resample_forward_kernel(
    x_ptr, grid_ptr, out_ptr,
    C, H, W, Ho, Wo, P,
    sxn, sxc, sxh, sxw,
    sgn, sgh, sgw, sgc,
    son, soc, soh, sow,
    CHANNELS_LAST, PIXEL_BUCKET,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pixels = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    channels = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    pixel_mask = pixels < P
    n = pixels // (Ho * Wo)
    rest = pixels % (Ho * Wo)
    ho = rest // Wo
    wo = rest % Wo
    x0, y0, wx1, wy1, _, _ = _source_corners(
        grid_ptr, n, ho, wo, sgn, sgh, sgw, sgc, H, W, pixel_mask
    )
    has_x1 = x0 + 1 < W
    has_y1 = y0 + 1 < H

    mask = pixel_mask[:, None] & (channels < C)[None, :]
    base = x_ptr + (n * sxn + y0 * sxh + x0 * sxw)[:, None] + (channels * sxc)[None, :]
    v00 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    v01 = tl.load(base + sxw, mask=mask & has_x1[:, None], other=0.0).to(tl.float32)
    v10 = tl.load(base + sxh, mask=mask & has_y1[:, None], other=0.0).to(tl.float32)
    v11 = tl.load(base + sxh + sxw, mask=mask & (has_x1 & has_y1)[:, None], other=0.0).to(
        tl.float32
    )
    wx1 = wx1[:, None]
    wy1 = wy1[:, None]
    top = v00 + wx1 * (v01 - v00)
    bottom = v10 + wx1 * (v11 - v10)
    value = top + wy1 * (bottom - top)
    out = out_ptr + (n * son + ho * soh + wo * sow)[:, None] + (channels * soc)[None, :]
    tl.store(out, value.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_BACKWARD_CONFIGS, key=_KEY, reset_to_zero=["grad_x_ptr"])
@triton.jit
def _resample_backward_kernel(
    grad_out_ptr, x_ptr, grid_ptr, grad_x_ptr, grad_grid_ptr,
    C, H, W, Ho, Wo, P,
    sdn, sdc, sdh, sdw,
    sxn, sxc, sxh, sxw,
    sgn, sgh, sgw, sgc,
    sbn, sbc, sbh, sbw,
    CHANNELS_LAST, PIXEL_BUCKET,
    NEED_X: tl.constexpr, NEED_GRID: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pixels = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < P
    n = pixels // (Ho * Wo)
    rest = pixels % (Ho * Wo)
    ho = rest // Wo
    wo = rest % Wo
    x0, y0, wx1, wy1, inside_x, inside_y = _source_corners(
        grid_ptr, n, ho, wo, sgn, sgh, sgw, sgc, H, W, pixel_mask
    )
    has_x1 = (x0 + 1 < W)[:, None]
    has_y1 = (y0 + 1 < H)[:, None]
    wx1 = wx1[:, None]
    wy1 = wy1[:, None]
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1
    grad_base = grad_out_ptr + (n * sdn + ho * sdh + wo * sdw)[:, None]
    x_base = x_ptr + (n * sxn + y0 * sxh + x0 * sxw)[:, None]
    gx_base = grad_x_ptr + (n * sbn + y0 * sbh + x0 * sbw)[:, None]
    d_ix = tl.zeros([BLOCK_P], dtype=tl.float32)
    d_iy = tl.zeros([BLOCK_P], dtype=tl.float32)
    # One program visits every channel block of its pixels: grad_grid needs the full channel sum.
    for c0 in range(0, C, BLOCK_C):
        channels = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        mask = pixel_mask[:, None] & (channels < C)[None, :]
        g = tl.load(grad_base + (channels * sdc)[None, :], mask=mask, other=0.0).to(tl.float32)
        if NEED_X:
            target = gx_base + (channels * sbc)[None, :]
            tl.atomic_add(target, g * (wy0 * wx0), mask=mask, sem="relaxed")
            tl.atomic_add(target + sbw, g * (wy0 * wx1), mask=mask & has_x1, sem="relaxed")
            tl.atomic_add(target + sbh, g * (wy1 * wx0), mask=mask & has_y1, sem="relaxed")
            tl.atomic_add(
                target + sbh + sbw, g * (wy1 * wx1), mask=mask & has_x1 & has_y1, sem="relaxed"
            )
        if NEED_GRID:
            source = x_base + (channels * sxc)[None, :]
            v00 = tl.load(source, mask=mask, other=0.0).to(tl.float32)
            v01 = tl.load(source + sxw, mask=mask & has_x1, other=0.0).to(tl.float32)
            v10 = tl.load(source + sxh, mask=mask & has_y1, other=0.0).to(tl.float32)
            v11 = tl.load(source + sxh + sxw, mask=mask & has_x1 & has_y1, other=0.0).to(tl.float32)
            d_ix += tl.sum(g * (wy0 * (v01 - v00) + wy1 * (v11 - v10)), axis=1)
            d_iy += tl.sum(g * (wx0 * (v10 - v00) + wx1 * (v11 - v01)), axis=1)
    if NEED_GRID:
        # d ix / d gx = W / 2 inside the clip range, 0 where border padding clipped it.
        d_gx = tl.where(inside_x, d_ix * (W * 0.5), 0.0)
        d_gy = tl.where(inside_y, d_iy * (H * 0.5), 0.0)
        out = grad_grid_ptr + pixels * 2
        tl.store(out, d_gx.to(grad_grid_ptr.dtype.element_ty), mask=pixel_mask)
        tl.store(out + 1, d_gy.to(grad_grid_ptr.dtype.element_ty), mask=pixel_mask)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format results take: channels-last for channels-last ``x``, else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _pixel_bucket(count: int) -> int:
    return max(count, 1).bit_length()


@torch.library.custom_op("sfm::resample", mutates_args=())
def _resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    check_device(x=x, grid=grid)
    batch, channels, height, width = x.shape
    out_h, out_w = grid.shape[1:3]
    out = torch.empty(
        (batch, channels, out_h, out_w), dtype=x.dtype, device=x.device, memory_format=_layout(x)
    )
    pixels = batch * out_h * out_w
    if out.numel() == 0:
        return out

    def launch(meta: dict[str, int]) -> tuple[int, int]:
        return cdiv(pixels, meta["BLOCK_P"]), cdiv(channels, meta["BLOCK_C"])

    _resample_forward_kernel[launch](
        x, grid, out,
        channels, height, width, out_h, out_w, pixels,
        *x.stride(), *grid.stride(), *out.stride(),
        int(_layout(x) == torch.channels_last), _pixel_bucket(pixels),
    )  # fmt: skip
    return out


@_resample.register_fake
def _(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    batch, channels = x.shape[:2]
    return torch.empty(
        (batch, channels, *grid.shape[1:3]),
        dtype=x.dtype,
        device=x.device,
        memory_format=_layout(x),
    )


@torch.library.custom_op("sfm::resample_backward", mutates_args=())
def _resample_backward(
    grad_out: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, need_x: bool, need_grid: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_grid)``; a gradient that is not needed comes back empty."""
    check_device(grad_out=grad_out, x=x, grid=grid)
    batch, channels, height, width = x.shape
    out_h, out_w = grid.shape[1:3]
    pixels = batch * out_h * out_w
    buffer = (
        torch.zeros_like(x, dtype=torch.float32, memory_format=_layout(x))
        if need_x
        else x.new_empty(0, dtype=torch.float32)
    )
    grad_grid = (
        torch.empty_like(grid, memory_format=torch.contiguous_format)
        if need_grid
        else grid.new_empty(0)
    )
    if pixels > 0 and channels > 0 and (need_x or need_grid):

        def launch(meta: dict[str, int]) -> tuple[int]:
            return (cdiv(pixels, meta["BLOCK_P"]),)

        buffer_strides = buffer.stride() if need_x else (0, 0, 0, 0)
        _resample_backward_kernel[launch](
            grad_out, x, grid, buffer, grad_grid,
            channels, height, width, out_h, out_w, pixels,
            *grad_out.stride(), *x.stride(), *grid.stride(), *buffer_strides,
            int(_layout(x) == torch.channels_last), _pixel_bucket(pixels),
            NEED_X=need_x, NEED_GRID=need_grid,
        )  # fmt: skip
    elif need_grid:
        grad_grid.zero_()
    grad_x = buffer.to(x.dtype) if need_x else x.new_empty(0)
    return grad_x, grad_grid


@_resample_backward.register_fake
def _(
    grad_out: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, need_x: bool, need_grid: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = torch.empty_like(x, memory_format=_layout(x)) if need_x else x.new_empty(0)
    grad_grid = grid.new_empty(grid.shape) if need_grid else grid.new_empty(0)
    return grad_x, grad_grid


def _setup_context(
    ctx: torch.autograd.function.FunctionCtx,
    inputs: tuple[torch.Tensor, torch.Tensor],
    output: torch.Tensor,
) -> None:
    ctx.save_for_backward(*inputs)


def _backward(
    ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    x, grid = ctx.saved_tensors  # type: ignore[attr-defined]
    need_x, need_grid = ctx.needs_input_grad[:2]  # type: ignore[attr-defined]
    grad_x, grad_grid = _resample_backward(grad_out, x, grid, need_x, need_grid)
    return (grad_x if need_x else None), (grad_grid if need_grid else None)


_resample.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.sfm.resample)
def _resample_flops(
    x_shape: list[int], grid_shape: list[int], *args: object, **kwargs: object
) -> int:
    return 2 * resample_macs(x_shape, grid_shape)


@register_flop_formula(torch.ops.sfm.resample_backward)
def _resample_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    grid_shape: list[int],
    *args: object,
    **kwargs: object,
) -> int:
    return 2 * resample_backward_macs(x_shape, grid_shape)


def resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """:func:`sfm_core.functional.resample` on Triton: bilinear, border, ``align_corners=False``.

    ``x``: ``[B, C, H, W]`` float16/bfloat16/float32 in any strided layout (channels-last is read
    in place and the result stays channels-last); ``grid``: ``[B, Ho, Wo, 2]`` float32 or the
    dtype of ``x``. Arithmetic is fp32; the result has ``x``'s dtype.
    """
    check_tensor("x", x, ndim=4, shape_hint="[B, C, H, W]")
    check_nonempty_map("x", x, "([B, C, H, W])")
    check_grid(grid)
    check_same_batch(x=x, grid=grid)
    check_dtype("x", x)
    check_dtype("grid", grid)
    check_device(x=x, grid=grid)
    return torch.ops.sfm.resample(x, grid)  # type: ignore[no-any-return]
