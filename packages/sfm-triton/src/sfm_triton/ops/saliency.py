"""Saliency-sampler grid (ARS steps 2-3) as Triton kernels.

Same contract as :func:`sfm_core.functional.saliency_grid`. The reference runs padding, two
separable convolutions over stacked maps and several elementwise passes; here one kernel reads the
logits and writes the grid: each program owns a tile of output pixels and walks the (2P+1)²
window, computing the saliency ``max(exp(A - max A), s_min)`` of every tap on the fly at its
reflect-padded source pixel (periodic reflection, so maps smaller than the window work like the
reference's ``reflect_indices``) while the coordinates continue the linear ramp. The per-image max
is one small reduction before it.

Backward (the window sums are linear in the saliency): with u = Σk·S·x′/Σk·S, a pixel p sends
``α_p = ∂L/∂u_p / D_p``, ``β_p = ∂L/∂v_p / D_p`` and ``γ_p = (∂L/∂u_p·u_p + ∂L/∂v_p·v_p) / D_p``
(D = Σk·S); a padded tap t then gets ``G(t) = x′_t·(k∗α)(t) + y′_t·(k∗β)(t) − (k∗γ)(t)`` and a source
pixel q the sum of G over the padded taps that reflect onto it. That is a gather per source pixel
(no atomics), followed by the clamp at ``s_min``, the exp, and the max shift (whose gradient goes to
the arg-max pixels as the reference's ``amax`` sends it).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from sfm_core._checks import check_nonempty_map, check_tensor
from sfm_core.flops import saliency_grid_macs
from sfm_core.functional.saliency import check_saliency_settings
from sfm_triton._runtime import autotune_configs, cdiv, check_device, check_dtype

# The window loops stay loops (unrolling 121 taps made sm_90 compiles take 20-40 s and spill);
# 32x32 tiles spill in the backward with Triton 3.6.
_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_H": 8, "BLOCK_W": 16}, num_warps=4),
        triton.Config({"BLOCK_H": 8, "BLOCK_W": 32}, num_warps=4),
        triton.Config({"BLOCK_H": 16, "BLOCK_W": 16}, num_warps=4),
        triton.Config({"BLOCK_H": 16, "BLOCK_W": 32}, num_warps=4),
    ]
)
_KEY = ["WINDOW", "PIXEL_BUCKET"]


@triton.jit
def _reflect(t, length):
    """Index of padded position ``t`` in a reflect-padded axis of ``length`` (edge not repeated)."""
    period = tl.maximum(2 * (length - 1), 1)
    folded = t % period
    folded = tl.where(folded < 0, folded + period, folded)
    return tl.where(folded < length, folded, period - folded)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _saliency_forward_kernel(
    logits_ptr, max_ptr, grid_ptr, stats_ptr,
    H, W, sln, slh, slw,
    s_min, gauss, PIXEL_BUCKET,
    WINDOW: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    batch = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    tile = (rows < H)[:, None] & (cols < W)[None, :]
    shift = tl.load(max_ptr + batch)
    base = logits_ptr + batch * sln
    weight = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    sum_x = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    sum_y = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for a in range(2 * WINDOW + 1):
        tap_rows = rows + (a - WINDOW)
        source_rows = _reflect(tap_rows, H).to(tl.int64)
        k_row = tl.exp(-gauss * ((a - WINDOW) * (a - WINDOW)))
        row_weight = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        row_x = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for b in range(2 * WINDOW + 1):
            tap_cols = cols + (b - WINDOW)
            source_cols = _reflect(tap_cols, W).to(tl.int64)
            k_col = tl.exp(-gauss * ((b - WINDOW) * (b - WINDOW)))
            logit = tl.load(
                base + (source_rows * slh)[:, None] + (source_cols * slw)[None, :],
                mask=tile,
                other=0.0,
            ).to(tl.float32)
            saliency = tl.maximum(tl.exp(logit - shift), s_min)
            # Coordinates continue the linear ramp into the padding (they are not reflected).
            x_coord = (tap_cols.to(tl.float32) + 0.5) / W
            term = k_col * saliency
            row_weight += term
            row_x += term * x_coord[None, :]
        y_coord = (tap_rows.to(tl.float32) + 0.5) / H
        weight += k_row * row_weight
        sum_x += k_row * row_x
        sum_y += (k_row * y_coord)[:, None] * row_weight
    u = sum_x / weight
    v = sum_y / weight
    gx = tl.minimum(tl.maximum(2.0 * u - 1.0, -1.0 + 1.0 / W), 1.0 - 1.0 / W)
    gy = tl.minimum(tl.maximum(2.0 * v - 1.0, -1.0 + 1.0 / H), 1.0 - 1.0 / H)
    # Pin the border: first/last column keep their identity x, first/last row their identity y.
    identity_x = (2.0 * cols.to(tl.float32) + 1.0) / W - 1.0
    identity_y = (2.0 * rows.to(tl.float32) + 1.0) / H - 1.0
    edge_col = ((cols == 0) | (cols == W - 1))[None, :]
    edge_row = ((rows == 0) | (rows == H - 1))[:, None]
    gx = tl.where(edge_col, identity_x[None, :] + tl.zeros_like(gx), gx)
    gy = tl.where(edge_row, identity_y[:, None] + tl.zeros_like(gy), gy)
    pixel = batch * H * W + (rows.to(tl.int64) * W)[:, None] + cols[None, :]
    tl.store(grid_ptr + 2 * pixel, gx, mask=tile)
    tl.store(grid_ptr + 2 * pixel + 1, gy, mask=tile)
    plane = (rows.to(tl.int64) * W)[:, None] + cols[None, :]
    stats = stats_ptr + batch * 3 * H * W + plane
    tl.store(stats, weight, mask=tile)
    tl.store(stats + H * W, u, mask=tile)
    tl.store(stats + 2 * H * W, v, mask=tile)


@triton.jit
def _saliency_coefficients_kernel(
    grad_grid_ptr, stats_ptr, coef_ptr,
    H, W, total, sgn, sgh, sgw, sgc,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Per pixel: α = ∂L/∂u / D, β = ∂L/∂v / D, γ = (∂L/∂u·u + ∂L/∂v·v) / D, through clamp and pin."""
    pixel = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = pixel < total
    batch = pixel // (H * W)
    plane = pixel % (H * W)
    row = plane // W
    col = plane % W
    g = grad_grid_ptr + batch * sgn + row * sgh + col * sgw
    grad_x = tl.load(g, mask=mask, other=0.0).to(tl.float32)
    grad_y = tl.load(g + sgc, mask=mask, other=0.0).to(tl.float32)
    stats = stats_ptr + batch * 3 * H * W + plane
    weight = tl.load(stats, mask=mask, other=1.0)
    u = tl.load(stats + H * W, mask=mask, other=0.0)
    v = tl.load(stats + 2 * H * W, mask=mask, other=0.0)
    raw_x = 2.0 * u - 1.0
    raw_y = 2.0 * v - 1.0
    # clamp passes the gradient on its closed interval; pinned edges receive none.
    pass_x = (raw_x >= -1.0 + 1.0 / W) & (raw_x <= 1.0 - 1.0 / W) & (col != 0) & (col != W - 1)
    pass_y = (raw_y >= -1.0 + 1.0 / H) & (raw_y <= 1.0 - 1.0 / H) & (row != 0) & (row != H - 1)
    grad_u = tl.where(pass_x, 2.0 * grad_x, 0.0)
    grad_v = tl.where(pass_y, 2.0 * grad_y, 0.0)
    out = coef_ptr + batch * 3 * H * W + plane
    tl.store(out, grad_u / weight, mask=mask)
    tl.store(out + H * W, grad_v / weight, mask=mask)
    tl.store(out + 2 * H * W, (grad_u * u + grad_v * v) / weight, mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _saliency_backward_kernel(
    coef_ptr, logits_ptr, max_ptr, grad_ptr,
    H, W, sln, slh, slw,
    row_images, row_first, col_images, col_first,
    s_min, gauss, PIXEL_BUCKET,
    WINDOW: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """∂L/∂A at each source pixel (before the max shift), gathered over its reflected images."""
    batch = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_in = rows < H
    col_in = cols < W
    row_period = tl.maximum(2 * (H - 1), 1)
    col_period = tl.maximum(2 * (W - 1), 1)
    coef = coef_ptr + batch * 3 * H * W
    total = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    # Padded positions reflecting onto q are s·q + n·period (s = ±1); s = -1 repeats s = +1 at
    # the two edge pixels, so it is skipped there.
    for r in range(2 * row_images):
        sign_r = 1 - 2 * (r % 2)
        tap_rows = sign_r * rows + (row_first + r // 2) * row_period
        ok_r = row_in & (tap_rows >= -WINDOW) & (tap_rows < H + WINDOW)
        if sign_r == -1:  # a branch, not `(sign_r == 1) | mask`: the interpreter of triton>=3.9
            ok_r = ok_r & (rows != 0) & (rows != H - 1)  # makes that mask int32 and load rejects it
        if tl.max(ok_r.to(tl.int32), axis=0) > 0:
            for c in range(2 * col_images):
                sign_c = 1 - 2 * (c % 2)
                tap_cols = sign_c * cols + (col_first + c // 2) * col_period
                ok_c = col_in & (tap_cols >= -WINDOW) & (tap_cols < W + WINDOW)
                if sign_c == -1:
                    ok_c = ok_c & (cols != 0) & (cols != W - 1)
                if tl.max(ok_c.to(tl.int32), axis=0) > 0:
                    sum_a = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
                    sum_b = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
                    sum_c = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
                    for a in range(2 * WINDOW + 1):
                        p_rows = tap_rows - (a - WINDOW)
                        use_r = ok_r & (p_rows >= 0) & (p_rows < H)
                        k_row = tl.exp(-gauss * ((a - WINDOW) * (a - WINDOW)))
                        part_a = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
                        part_b = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
                        part_c = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
                        for b in range(2 * WINDOW + 1):
                            p_cols = tap_cols - (b - WINDOW)
                            use = use_r[:, None] & (ok_c & (p_cols >= 0) & (p_cols < W))[None, :]
                            k_col = tl.exp(-gauss * ((b - WINDOW) * (b - WINDOW)))
                            at = coef + (p_rows.to(tl.int64) * W)[:, None] + p_cols[None, :]
                            part_a += k_col * tl.load(at, mask=use, other=0.0)
                            part_b += k_col * tl.load(at + H * W, mask=use, other=0.0)
                            part_c += k_col * tl.load(at + 2 * H * W, mask=use, other=0.0)
                        sum_a += k_row * part_a
                        sum_b += k_row * part_b
                        sum_c += k_row * part_c
                    x_coord = (tap_cols.to(tl.float32) + 0.5) / W
                    y_coord = (tap_rows.to(tl.float32) + 0.5) / H
                    total += x_coord[None, :] * sum_a + y_coord[:, None] * sum_b - sum_c
    tile = row_in[:, None] & col_in[None, :]
    logit = tl.load(
        logits_ptr + batch * sln + (rows.to(tl.int64) * slh)[:, None] + (cols * slw)[None, :],
        mask=tile,
        other=0.0,
    ).to(tl.float32)
    exp_shifted = tl.exp(logit - tl.load(max_ptr + batch))
    # clamp_min passes the gradient where exp(A - max) >= s_min.
    grad = tl.where(exp_shifted >= s_min, total * exp_shifted, 0.0)
    out = grad_ptr + batch * H * W + (rows.to(tl.int64) * W)[:, None] + cols[None, :]
    tl.store(out, grad, mask=tile)


def _gauss(fwhm: float) -> float:
    """c in k(a) = exp(-c a²) for the Gaussian of full width at half maximum ``fwhm``."""
    return 4.0 * math.log(2.0) / (fwhm * fwhm)


def _images(length: int, window: int) -> tuple[int, int]:
    """(count, first n) of the periods n that can put a reflected image inside the padded axis."""
    period = max(2 * (length - 1), 1)
    first = (-window - length + 1) // period
    last = (2 * length + window - 2) // period
    return last - first + 1, first


def _image_max(logits: torch.Tensor) -> torch.Tensor:
    return logits.amax(dim=(1, 2, 3)).to(torch.float32).contiguous()


def _tile_launch(batch: int, height: int, width: int):  # type: ignore[no-untyped-def]
    def launch(meta: dict[str, int]) -> tuple[int, int, int]:
        return cdiv(width, meta["BLOCK_W"]), cdiv(height, meta["BLOCK_H"]), batch

    return launch


@torch.library.custom_op("sfm::saliency_grid", mutates_args=())
def _saliency_grid(
    logits: torch.Tensor, window: int, fwhm: float, s_min: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grid [B, H, W, 2], stats [B, 3, H, W])``; stats = (Σk·S, u, v), kept for the backward."""
    check_device(logits=logits)
    batch, _, height, width = logits.shape
    grid = logits.new_empty((batch, height, width, 2), dtype=torch.float32)
    stats = logits.new_empty((batch, 3, height, width), dtype=torch.float32)
    if grid.numel() == 0:
        return grid, stats
    _saliency_forward_kernel[_tile_launch(batch, height, width)](
        logits, _image_max(logits), grid, stats,
        height, width, logits.stride(0), logits.stride(2), logits.stride(3),
        s_min, _gauss(fwhm), (height * width).bit_length(),
        WINDOW=window,
    )  # fmt: skip
    return grid, stats


@_saliency_grid.register_fake
def _(
    logits: torch.Tensor, window: int, fwhm: float, s_min: float
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, _, height, width = logits.shape
    return (
        logits.new_empty((batch, height, width, 2), dtype=torch.float32),
        logits.new_empty((batch, 3, height, width), dtype=torch.float32),
    )


@torch.library.custom_op("sfm::saliency_grid_backward", mutates_args=())
def _saliency_grid_backward(
    grad_grid: torch.Tensor,
    logits: torch.Tensor,
    stats: torch.Tensor,
    window: int,
    fwhm: float,
    s_min: float,
) -> torch.Tensor:
    check_device(grad_grid=grad_grid, logits=logits, stats=stats)
    batch, _, height, width = logits.shape
    if logits.numel() == 0:
        return torch.zeros_like(logits)
    pixels = batch * height * width
    coefficients = torch.empty_like(stats)
    block = 128
    _saliency_coefficients_kernel[(cdiv(pixels, block),)](
        grad_grid, stats, coefficients, height, width, pixels, *grad_grid.stride(), BLOCK=block
    )
    shift = _image_max(logits)
    partial = logits.new_empty((batch, height, width), dtype=torch.float32)
    row_images, row_first = _images(height, window)
    col_images, col_first = _images(width, window)
    _saliency_backward_kernel[_tile_launch(batch, height, width)](
        coefficients, logits, shift, partial,
        height, width, logits.stride(0), logits.stride(2), logits.stride(3),
        row_images, row_first, col_images, col_first,
        s_min, _gauss(fwhm), (height * width).bit_length(),
        WINDOW=window,
    )  # fmt: skip
    # The max shift: ∂L/∂max = -Σ ∂L/∂A, shared equally by the pixels that attain the max.
    attains = logits.reshape(batch, height, width).to(torch.float32) == shift.view(batch, 1, 1)
    share = -partial.sum(dim=(1, 2)) / attains.sum(dim=(1, 2))
    grad = partial + attains * share.view(batch, 1, 1)
    return grad.view(batch, 1, height, width).to(logits.dtype)


@_saliency_grid_backward.register_fake
def _(
    grad_grid: torch.Tensor,
    logits: torch.Tensor,
    stats: torch.Tensor,
    window: int,
    fwhm: float,
    s_min: float,
) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(
    ctx: torch.autograd.function.FunctionCtx,
    inputs: tuple[torch.Tensor, int, float, float],
    output: tuple[torch.Tensor, torch.Tensor],
) -> None:
    logits, window, fwhm, s_min = inputs
    ctx.save_for_backward(logits, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.settings = (window, fwhm, s_min)  # type: ignore[attr-defined]


def _backward(
    ctx: torch.autograd.function.FunctionCtx, grad_grid: torch.Tensor, _grad_stats: torch.Tensor
) -> tuple[torch.Tensor | None, None, None, None]:
    logits, stats = ctx.saved_tensors  # type: ignore[attr-defined]
    if not ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
        return None, None, None, None
    grad = _saliency_grid_backward(grad_grid, logits, stats, *ctx.settings)  # type: ignore[attr-defined]
    return grad, None, None, None


_saliency_grid.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.sfm.saliency_grid)
def _saliency_grid_flops(
    logits_shape: list[int], window: int, *args: object, **kwargs: object
) -> int:
    return 2 * saliency_grid_macs(logits_shape, window)


@register_flop_formula(torch.ops.sfm.saliency_grid_backward)
def _saliency_grid_backward_flops(
    grad_grid_shape: list[int], logits_shape: list[int], stats_shape: list[int], window: int,
    *args: object, **kwargs: object,
) -> int:  # fmt: skip
    return 2 * saliency_grid_macs(logits_shape, window)


def saliency_grid(
    logits: torch.Tensor, *, window: int = 5, fwhm: float = 3.0, s_min: float = 1e-3
) -> torch.Tensor:
    """:func:`sfm_core.functional.saliency_grid` on Triton, fused into one pass over the window.

    ``logits``: ``[B, 1, H, W]`` float16/bfloat16/float32, any strides (float64 is refused: use
    the reference backend for it). Returns the ``[B, H, W, 2]`` grid in float32.
    """
    check_tensor("logits", logits, ndim=4, shape_hint="[B, 1, H, W]")
    if logits.shape[1] != 1:
        raise ValueError(
            f"logits must have 1 channel ([B, 1, H, W]), got shape {tuple(logits.shape)}"
        )
    check_nonempty_map("logits", logits, "([B, 1, H, W])")
    # The reference's limits: WINDOW is a compile-time constant here, so an unbounded window
    # would also mean an unbounded compile.
    check_saliency_settings(window, fwhm, s_min)
    check_dtype("logits", logits)
    check_device(logits=logits)
    grid, _ = torch.ops.sfm.saliency_grid(logits, window, float(fwhm), float(s_min))
    return grid  # type: ignore[no-any-return]
