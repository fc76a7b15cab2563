"""``lprm_aggregate``: the dilated 3x3 dynamic aggregation of METHOD.md §3.2 as Triton kernels.

Forward: one program owns a block of pixels x a block of channels; it loads the pixel's 9 logits,
takes their softmax in registers (the normalised weights are never written) and accumulates the
9 clamped taps in fp32. The tap addresses are fixed shifts of the tile, so every load is a dense,
coalesced (clamped) shifted tile.

Backward, without atomics (deterministic):
* ``grad_logits`` = softmax-backward of ``g_n(p) = sum_k dOut(k, p) v(k, clamp(p + d o_n))``: one
  program per pixel block loops over the channels (single writer). It also writes the fp32
  softmax weights (9 floats per pixel) for the next kernel.
* ``grad_v(k, q) = sum_n sum_{p : clamp(p + d o_n) = q} W_n(p) dOut(k, p)`` by gathering: one
  program per (row, column block, channel block). Per axis, the pixels that clamp onto ``q`` form
  the range ``[q - s if q > 0 else 0, q - s if q < size - 1 else size - 1]`` cut to the map
  (``s = d o``): one pixel inside the map, up to ``min(d, size - 1) + 1`` on its first and last
  row/column. The row range is the same for the whole program, so it is a plain loop; along the
  columns each pixel takes its one shifted pixel, and the first/last column additionally sums the
  ``min(d, W)`` pixels that clamp onto it, in chunks of ``SPAN``.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from sfm_core._checks import check_positive, check_same_batch, check_tensor
from sfm_core.flops import lprm_aggregate_macs
from sfm_triton._runtime import autotune_configs, cdiv, check_device, check_dtype

TAPS = 9
_SPAN = 16  # columns summed at once where the first/last column collects its clamped pixels

# At most 16 tile elements per thread (larger tiles spill); every config compiles for sm_90
# without spills (tests/compile_nonuniform_lprm_for_gpu.py).
_PIXEL_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 32}, num_warps=8),
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 64}, num_warps=8),
    ]
)
# grad_logits also keeps the 9 softmax weights and 9 tap sums per pixel: a 128-pixel tile with 4
# warps needs 255 registers there and spills 8 bytes (bf16 channels-last), so it is left out.
_GRAD_LOGITS_CONFIGS = [
    config
    for config in _PIXEL_CONFIGS
    if (config.kwargs["BLOCK_P"], config.kwargs["BLOCK_C"], config.num_warps) != (128, 16, 4)
]
_ROW_CONFIGS = autotune_configs(
    [
        triton.Config({"BLOCK_X": 32, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_X": 32, "BLOCK_C": 64}, num_warps=4),
        triton.Config({"BLOCK_X": 64, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_X": 128, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_X": 64, "BLOCK_C": 64}, num_warps=8),
        triton.Config({"BLOCK_X": 128, "BLOCK_C": 32}, num_warps=8),
    ]
)
# Keys: channels, layout and the pixel count bucketed to a power of two (a new crop size re-tunes
# only when it changes the bucket); the row kernel's tile runs along a row, so its width bucket.
_PIXEL_KEY = ["K", "CHANNELS_LAST", "PIXEL_BUCKET"]
_ROW_KEY = ["K", "CHANNELS_LAST", "WIDTH_BUCKET"]


@triton.jit
def _softmax_taps(logits_ptr, base, pix, pixel_mask, stride_n, BLOCK_P: tl.constexpr):
    """fp32 softmax over the 9 taps, as a ``[BLOCK_P, 16]`` tile (columns 9..15 are 0)."""
    taps = tl.arange(0, 16)
    valid = taps < 9
    raw = tl.load(
        logits_ptr + base + taps.to(tl.int64)[None, :] * stride_n + pix[:, None],
        mask=pixel_mask[:, None] & valid[None, :],
        other=0.0,
    ).to(tl.float32)
    raw = tl.where(valid[None, :], raw, float("-inf"))
    top = tl.max(raw, axis=1)
    exp = tl.exp(raw - top[:, None])
    return exp / tl.sum(exp, axis=1)[:, None]


@triton.jit
def _tap_column(tile, taps, n):
    """Column ``n`` of a ``[BLOCK_P, 16]`` tile."""
    return tl.sum(tl.where(taps[None, :] == n, tile, 0.0), axis=1)


@triton.autotune(configs=_PIXEL_CONFIGS, key=_PIXEL_KEY)
@triton.jit
def _lprm_forward_kernel(
    v_ptr, logits_ptr, out_ptr,
    K, H, W, HW, dilation,
    svb, svc, svh, svw,
    slb, sln, slh, slw,
    sob, soc, soh, sow,
    CHANNELS_LAST, PIXEL_BUCKET,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = p < HW
    y = p // W
    x = p % W
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = pixel_mask[:, None] & (c < K)[None, :]
    taps = tl.arange(0, 16)
    weights = _softmax_taps(
        logits_ptr, b * slb, y.to(tl.int64) * slh + x.to(tl.int64) * slw, pixel_mask, sln, BLOCK_P
    )
    v_base = v_ptr + b * svb + c[None, :] * svc
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for n in range(9):  # a runtime loop: unrolled, the 9 tiles' loads are hoisted and spill
        ty = tl.minimum(tl.maximum(y + (n // 3 - 1) * dilation, 0), H - 1)
        tx = tl.minimum(tl.maximum(x + (n % 3 - 1) * dilation, 0), W - 1)
        src = ty.to(tl.int64) * svh + tx.to(tl.int64) * svw
        value = tl.load(v_base + src[:, None], mask=mask, other=0.0).to(tl.float32)
        acc += _tap_column(weights, taps, n)[:, None] * value
    dst = b * sob + c[None, :] * soc + (y.to(tl.int64) * soh + x.to(tl.int64) * sow)[:, None]
    tl.store(out_ptr + dst, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_GRAD_LOGITS_CONFIGS, key=_PIXEL_KEY)
@triton.jit
def _lprm_grad_logits_kernel(
    grad_ptr, v_ptr, logits_ptr, grad_logits_ptr, weights_ptr,
    K, H, W, HW, dilation,
    sgb, sgc, sgh, sgw,
    svb, svc, svh, svw,
    slb, sln, slh, slw,
    sob, son, soh, sow,
    CHANNELS_LAST, PIXEL_BUCKET,
    NEED_LOGITS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """The fp32 weights ``[B, 9, H, W]`` and (``NEED_LOGITS``) ``grad_logits``.

    ``grad_logits`` is written with its own strides (``so*``): for a sliced or expanded
    ``logits`` they differ from the input's (``sl*``), and writing with those ran past the
    buffer (an abort under the interpreter, an illegal access on a GPU).
    """
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = p < HW
    y = p // W
    x = p % W
    taps = tl.arange(0, 16)
    logit_pix = y.to(tl.int64) * slh + x.to(tl.int64) * slw
    weights = _softmax_taps(logits_ptr, b * slb, logit_pix, pixel_mask, sln, BLOCK_P)
    tap_mask = pixel_mask[:, None] & (taps < 9)[None, :]
    if NEED_LOGITS:
        grad_pix = y.to(tl.int64) * sgh + x.to(tl.int64) * sgw
        dots = tl.zeros([BLOCK_P, 16], dtype=tl.float32)
        for c0 in range(0, K, BLOCK_C):
            c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mask = pixel_mask[:, None] & (c < K)[None, :]
            grad = tl.load(
                grad_ptr + b * sgb + c[None, :] * sgc + grad_pix[:, None], mask=mask, other=0.0
            ).to(tl.float32)
            v_base = v_ptr + b * svb + c[None, :] * svc
            for n in range(9):
                ty = tl.minimum(tl.maximum(y + (n // 3 - 1) * dilation, 0), H - 1)
                tx = tl.minimum(tl.maximum(x + (n % 3 - 1) * dilation, 0), W - 1)
                src = ty.to(tl.int64) * svh + tx.to(tl.int64) * svw
                value = tl.load(v_base + src[:, None], mask=mask, other=0.0).to(tl.float32)
                dots += tl.where(taps[None, :] == n, tl.sum(grad * value, axis=1)[:, None], 0.0)
        grad_logits = weights * (dots - tl.sum(weights * dots, axis=1)[:, None])
        out_pix = y.to(tl.int64) * soh + x.to(tl.int64) * sow
        tl.store(
            grad_logits_ptr + b * sob + taps.to(tl.int64)[None, :] * son + out_pix[:, None],
            grad_logits.to(grad_logits_ptr.dtype.element_ty),
            mask=tap_mask,
        )
    tl.store(
        weights_ptr + b * 9 * HW + taps.to(tl.int64)[None, :] * HW + p[:, None],
        weights,
        mask=tap_mask,
    )


@triton.jit
def _clamped_columns(
    grad_base, weights_row, grad_row, sgw, W, clamped, channel_mask,
    LEFT: tl.constexpr, SPAN: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Sum over the ``clamped`` first (``LEFT``) or last columns of one row of ``W_n * dOut``."""
    extra = tl.zeros([BLOCK_C], dtype=tl.float32)
    for j0 in range(0, clamped, SPAN):
        j = j0 + tl.arange(0, SPAN)
        column = j if LEFT else W - 1 - j
        j_mask = j < clamped
        weight = tl.load(weights_row + column, mask=j_mask, other=0.0)
        grad = tl.load(
            grad_base + (grad_row + column.to(tl.int64) * sgw)[:, None],
            mask=j_mask[:, None] & channel_mask,
            other=0.0,
        ).to(tl.float32)
        extra += tl.sum(weight[:, None] * grad, axis=0)
    return extra


@triton.autotune(configs=_ROW_CONFIGS, key=_ROW_KEY)
@triton.jit
def _lprm_grad_v_kernel(
    grad_ptr, weights_ptr, grad_v_ptr,
    K, H, W, HW, dilation,
    sgb, sgc, sgh, sgw,
    sdb, sdc, sdh, sdw,
    CHANNELS_LAST, WIDTH_BUCKET,
    SPAN: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``grad_v`` for one row ``q_y`` x a block of columns x a block of channels."""
    column_blocks = tl.cdiv(W, BLOCK_X)
    qy = tl.program_id(0) // column_blocks
    block = tl.program_id(0) % column_blocks
    b = tl.program_id(2).to(tl.int64)
    qx = block * BLOCK_X + tl.arange(0, BLOCK_X)
    column_mask = qx < W
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    channel_mask = (c < K)[None, :]
    grad_base = grad_ptr + b * sgb + c[None, :] * sgc
    weights_base = weights_ptr + b * 9 * HW
    # Columns that clamp onto the first/last column besides its shifted one: min(d, W) of them.
    clamped = tl.minimum(dilation, W)
    acc = tl.zeros([BLOCK_X, BLOCK_C], dtype=tl.float32)
    for n in range(9):
        sy = (n // 3 - 1) * dilation
        sx = (n % 3 - 1) * dilation
        y_lo = tl.where(qy == 0, 0, tl.maximum(qy - sy, 0))
        y_hi = tl.where(qy == H - 1, H - 1, tl.minimum(qy - sy, H - 1))
        px = qx - sx
        px_mask = column_mask & (px >= 0) & (px < W)
        # The first (last) column also collects the columns left (right) of the map's edge.
        left_edge = (n % 3 == 0) & (block == 0)
        right_edge = (n % 3 == 2) & (block == column_blocks - 1)
        for py in range(y_lo, y_hi + 1):
            row = tl.cast(py, tl.int64)
            weights_row = weights_base + tl.cast(n, tl.int64) * HW + row * W
            weight = tl.load(weights_row + px, mask=px_mask, other=0.0)
            grad = tl.load(
                grad_base + (row * sgh + px.to(tl.int64) * sgw)[:, None],
                mask=px_mask[:, None] & channel_mask,
                other=0.0,
            ).to(tl.float32)
            acc += weight[:, None] * grad
            if left_edge:
                extra = _clamped_columns(
                    grad_base, weights_row, row * sgh, sgw, W, clamped, channel_mask,
                    True, SPAN, BLOCK_C,
                )  # fmt: skip
                acc += tl.where((qx == 0)[:, None], extra[None, :], 0.0)
            if right_edge:
                extra = _clamped_columns(
                    grad_base, weights_row, row * sgh, sgw, W, clamped, channel_mask,
                    False, SPAN, BLOCK_C,
                )  # fmt: skip
                acc += tl.where((qx == W - 1)[:, None], extra[None, :], 0.0)
    dst = b * sdb + c[None, :] * sdc + (qy.to(tl.int64) * sdh + qx.to(tl.int64) * sdw)[:, None]
    tl.store(
        grad_v_ptr + dst,
        acc.to(grad_v_ptr.dtype.element_ty),
        mask=column_mask[:, None] & channel_mask,
    )


def _check_arguments(v: torch.Tensor, logits: torch.Tensor, dilation: int) -> None:
    """The reference's argument contract, plus what the kernels need (device, dtype)."""
    check_tensor("v", v, ndim=4, shape_hint="[B, K, H, W]")
    check_tensor("logits", logits, ndim=4, shape_hint="[B, 9, H, W]")
    check_positive("dilation", dilation, integer=True)
    check_same_batch(v=v, logits=logits)
    if logits.shape[1] != TAPS:
        raise ValueError(
            f"logits must have 9 channels ([B, 9, H, W]), got shape {tuple(logits.shape)}"
        )
    if logits.shape[-2:] != v.shape[-2:]:
        raise ValueError(
            f"logits and v must share H, W, got logits {tuple(logits.shape)} and v {tuple(v.shape)}"
        )
    if v.shape[0] > 65535:
        raise ValueError(f"v must have a batch of at most 65535, got {v.shape[0]}")
    check_dtype("v", v)
    check_dtype("logits", logits)
    check_device(v=v, logits=logits)


def _is_channels_last(tensor: torch.Tensor) -> int:
    return int(
        tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
    )


def _bucket(count: int) -> int:
    return max(count, 1).bit_length()


@torch.library.custom_op("sfm::lprm_aggregate", mutates_args=())
def _lprm_aggregate_op(v: torch.Tensor, logits: torch.Tensor, dilation: int) -> torch.Tensor:
    check_device(v=v, logits=logits)
    batch, channels, height, width = v.shape
    out = torch.empty_like(v)
    if out.numel() == 0:
        return out

    def grid(meta: dict[str, Any]) -> tuple[int, int, int]:
        return (cdiv(height * width, meta["BLOCK_P"]), cdiv(channels, meta["BLOCK_C"]), batch)

    _lprm_forward_kernel[grid](
        v, logits, out,
        channels, height, width, height * width, dilation,
        *v.stride(), *logits.stride(), *out.stride(),
        _is_channels_last(v), _bucket(height * width),
    )  # fmt: skip
    return out


@_lprm_aggregate_op.register_fake
def _lprm_aggregate_fake(v: torch.Tensor, logits: torch.Tensor, dilation: int) -> torch.Tensor:
    return torch.empty_like(v)


@torch.library.custom_op("sfm::lprm_aggregate_backward", mutates_args=())
def _lprm_aggregate_backward_op(
    grad: torch.Tensor,
    v: torch.Tensor,
    logits: torch.Tensor,
    dilation: int,
    need_v: bool,
    need_logits: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_v, grad_logits)``; a gradient that is not needed comes back empty."""
    check_device(grad=grad, v=v, logits=logits)
    batch, channels, height, width = v.shape
    grad_v = torch.empty_like(v) if need_v else v.new_empty(0)
    grad_logits = torch.empty_like(logits) if need_logits else logits.new_empty(0)
    if v.numel() == 0:
        return grad_v, grad_logits.zero_()
    weights = torch.empty(batch, TAPS, height, width, dtype=torch.float32, device=v.device)

    def pixel_grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (cdiv(height * width, meta["BLOCK_P"]), batch)

    out_strides = grad_logits.stride() if need_logits else (0, 0, 0, 0)
    _lprm_grad_logits_kernel[pixel_grid](
        grad, v, logits, grad_logits if need_logits else weights, weights,
        channels, height, width, height * width, dilation,
        *grad.stride(), *v.stride(), *logits.stride(), *out_strides,
        _is_channels_last(v), _bucket(height * width),
        NEED_LOGITS=need_logits,
    )  # fmt: skip
    if need_v:

        def row_grid(meta: dict[str, Any]) -> tuple[int, int, int]:
            return (height * cdiv(width, meta["BLOCK_X"]), cdiv(channels, meta["BLOCK_C"]), batch)

        _lprm_grad_v_kernel[row_grid](
            grad, weights, grad_v,
            channels, height, width, height * width, dilation,
            *grad.stride(), *grad_v.stride(),
            _is_channels_last(v), _bucket(width),
            SPAN=_SPAN,
        )  # fmt: skip
    return grad_v, grad_logits


@_lprm_aggregate_backward_op.register_fake
def _lprm_aggregate_backward_fake(
    grad: torch.Tensor,
    v: torch.Tensor,
    logits: torch.Tensor,
    dilation: int,
    need_v: bool,
    need_logits: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_v = torch.empty_like(v) if need_v else v.new_empty(0)
    return grad_v, torch.empty_like(logits) if need_logits else logits.new_empty(0)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    v, logits, dilation = inputs
    ctx.save_for_backward(v, logits)
    ctx.dilation = dilation


def _backward(
    ctx: Any, grad: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
    v, logits = ctx.saved_tensors
    need_v, need_logits = ctx.needs_input_grad[:2]
    grad_v, grad_logits = _lprm_aggregate_backward_op(
        grad, v, logits, ctx.dilation, need_v, need_logits
    )
    return (grad_v if need_v else None, grad_logits if need_logits else None, None)


_lprm_aggregate_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.sfm.lprm_aggregate)
def _lprm_aggregate_flops(v_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * lprm_aggregate_macs(v_shape)


@register_flop_formula(torch.ops.sfm.lprm_aggregate_backward)
def _lprm_aggregate_backward_flops(
    grad_shape: Any,
    v_shape: Any,
    logits_shape: Any,
    dilation: int,
    need_v: bool,
    need_logits: bool,
    **kwargs: Any,
) -> int:
    """The transposed aggregation for ``grad_v``; 9 channel dot products for ``grad_logits``."""
    return 2 * lprm_aggregate_macs(v_shape) * (int(need_v) + int(need_logits))


def lprm_aggregate(v: torch.Tensor, logits: torch.Tensor, dilation: int) -> torch.Tensor:
    """Triton :func:`sfm_core.functional.lprm_aggregate`: same signature, semantics and dtypes.

    fp32/fp16/bf16 ``v`` and ``logits`` on CUDA (or CPU under ``TRITON_INTERPRET=1``), any
    strides; fp32 accumulation, output in ``v.dtype``; differentiable in ``v`` and ``logits``.
    """
    _check_arguments(v, logits, dilation)
    # Taps clamp to the map, so a dilation past its extent reads the same pixels as the extent;
    # capping it keeps ``y + dilation`` inside int32 in the kernels.
    dilation = min(dilation, max(v.shape[-2:], default=1))
    return torch.ops.sfm.lprm_aggregate(v, logits, dilation)  # type: ignore[no-any-return]
