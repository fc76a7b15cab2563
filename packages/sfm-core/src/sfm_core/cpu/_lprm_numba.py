"""numba kernels of the weighted dilated 3x3 aggregation (imported only when numba is installed).

``out(c, p) = sum_n w(n, p) v(c, clamp(p + d o_n))`` per image, one channel plane at a time so the
plane stays in cache. Each row splits into a clamped left part, an interior where the nine taps
are fixed shifts of three source rows (LLVM vectorises that loop) and a clamped right part.
"""

from __future__ import annotations

import numba
import numpy as np

CHANNEL_BLOCK = 8  # channel planes per pass over a row's nine weights (L1-sized)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _interior_forward(out, w, top, mid, bottom, d, lo, hi):  # type: ignore[no-untyped-def]
    """The unclamped columns ``[lo, hi)``; every index is a non-negative loop counter (numba's
    negative-index wraparound would otherwise turn the shifted loads into gathers)."""
    n = hi - lo
    o = out[lo:hi]
    w0, w1, w2 = w[0, lo:hi], w[1, lo:hi], w[2, lo:hi]
    w3, w4, w5 = w[3, lo:hi], w[4, lo:hi], w[5, lo:hi]
    w6, w7, w8 = w[6, lo:hi], w[7, lo:hi], w[8, lo:hi]
    tl, tm, tr = top[lo - d : hi - d], top[lo:hi], top[lo + d : hi + d]
    ml, mm, mr = mid[lo - d : hi - d], mid[lo:hi], mid[lo + d : hi + d]
    bl, bm, br = bottom[lo - d : hi - d], bottom[lo:hi], bottom[lo + d : hi + d]
    for i in range(n):
        o[i] = (
            w0[i] * tl[i] + w1[i] * tm[i] + w2[i] * tr[i]
            + w3[i] * ml[i] + w4[i] * mm[i] + w5[i] * mr[i]
            + w6[i] * bl[i] + w7[i] * bm[i] + w8[i] * br[i]
        )  # fmt: skip


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _clamped_forward(out, w, top, mid, bottom, d, x):  # type: ignore[no-untyped-def]
    width = out.shape[0]
    left, right = max(x - d, 0), min(x + d, width - 1)
    out[x] = (
        w[0, x] * top[left] + w[1, x] * top[x] + w[2, x] * top[right]
        + w[3, x] * mid[left] + w[4, x] * mid[x] + w[5, x] * mid[right]
        + w[6, x] * bottom[left] + w[7, x] * bottom[x] + w[8, x] * bottom[right]
    )  # fmt: skip


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _row_forward(out, w, top, mid, bottom, d, lo, hi):  # type: ignore[no-untyped-def]
    if hi > lo:
        _interior_forward(out, w, top, mid, bottom, d, lo, hi)
    for x in range(lo):
        _clamped_forward(out, w, top, mid, bottom, d, x)
    for x in range(hi, out.shape[0]):
        _clamped_forward(out, w, top, mid, bottom, d, x)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def aggregate_forward(v, weights, d, out):  # type: ignore[no-untyped-def]
    """``out [B, K, H, W] = aggregate(v [B, K, H, W], weights [B, H, 9, W])``, C-contiguous.

    The weights are row-major per image row (``[B, H, 9, W]``) so a row's nine are one block;
    channels go in blocks of :data:`CHANNEL_BLOCK` per row, so a row's weights are read from
    memory once per block, not once per channel.
    """
    batch, channels, height, width = v.shape
    lo = min(d, width)
    hi = max(width - d, lo)
    for b in range(batch):
        for c0 in range(0, channels, CHANNEL_BLOCK):
            for y in range(height):
                w = weights[b, y]
                top, bottom = max(y - d, 0), min(y + d, height - 1)
                for c in range(c0, min(c0 + CHANNEL_BLOCK, channels)):
                    plane = v[b, c]
                    _row_forward(out[b, c, y], w, plane[top], plane[y], plane[bottom], d, lo, hi)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _tap_backward(g, src, dst, wn, gwn, shift, lo, hi):  # type: ignore[no-untyped-def]
    """One tap of one row: ``gwn += g * src(x + shift)``, ``dst(x + shift) += wn * g``."""
    n = hi - lo
    gi, wi, gwi = g[lo:hi], wn[lo:hi], gwn[lo:hi]
    si, di = src[lo + shift : hi + shift], dst[lo + shift : hi + shift]
    for i in range(n):
        gwi[i] += gi[i] * si[i]
    for i in range(n):
        di[i] += wi[i] * gi[i]
    width = g.shape[0]
    for x in range(lo):
        _clamped_backward(g, src, dst, wn, gwn, shift, x, width)
    for x in range(hi, width):
        _clamped_backward(g, src, dst, wn, gwn, shift, x, width)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _clamped_backward(g, src, dst, wn, gwn, shift, x, width):  # type: ignore[no-untyped-def]
    sx = min(max(x + shift, 0), width - 1)
    gwn[x] += g[x] * src[sx]
    dst[sx] += wn[x] * g[x]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def aggregate_backward(grad, v, weights, d, grad_v, grad_weights):  # type: ignore[no-untyped-def]
    """``grad_v`` and ``grad_weights`` (``[B, H, 9, W]``, zeroed by the caller).

    ``grad_v`` needs no zeroing: each block of channel planes is cleared here, while it is cached.
    """
    batch, channels, height, width = v.shape
    lo = min(d, width)
    hi = max(width - d, lo)
    for b in range(batch):
        for c0 in range(0, channels, CHANNEL_BLOCK):
            c1 = min(c0 + CHANNEL_BLOCK, channels)
            grad_v[b, c0:c1] = 0
            for y in range(height):
                w = weights[b, y]
                gw = grad_weights[b, y]
                for c in range(c0, c1):
                    plane = v[b, c]
                    gv = grad_v[b, c]
                    g = grad[b, c, y]
                    for ty in range(3):
                        row = min(max(y + (ty - 1) * d, 0), height - 1)
                        src = plane[row]
                        dst = gv[row]
                        for tx in range(3):
                            n = 3 * ty + tx
                            _tap_backward(g, src, dst, w[n], gw[n], (tx - 1) * d, lo, hi)


def forward(v: np.ndarray, weights: np.ndarray, d: int, out: np.ndarray) -> None:
    aggregate_forward(v, weights, d, out)


def backward(
    grad: np.ndarray,
    v: np.ndarray,
    weights: np.ndarray,
    d: int,
    grad_v: np.ndarray,
    grad_weights: np.ndarray,
) -> None:
    aggregate_backward(grad, v, weights, d, grad_v, grad_weights)
