"""numba kernels of ARS's box average + high-pass step, one channel plane at a time.

Forward ``z = k ⋆ (r ⊙ (1 ⋆ x))``: the 3×3 window sum of ``x`` (zero padding) times ``r``, one
over the number of pixels inside the window (``count_include_pad=False``), then the channel's
3×3 kernel ``k`` (zero padding). Backward: ``grad_x = 1 ⋆ (r ⊙ (flip(k) ⋆ grad_z))`` and
``grad_k(a, b) = Σ_p grad_z(p) box(x)(p + (a, b) − 1)``. The plane and its padded scratch copies
stay in cache; the loops run over non-negative counters, so LLVM vectorises them.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _window_sum(padded, out):  # type: ignore[no-untyped-def]
    """``out(i, j) = Σ_{a, b < 3} padded(i + a, j + b)`` (``padded`` has a zero border of 1)."""
    height, width = out.shape
    for i in range(height):
        r0, r1, r2 = padded[i], padded[i + 1], padded[i + 2]
        o = out[i]
        for j in range(width):
            o[j] = (
                r0[j] + r0[j + 1] + r0[j + 2]
                + r1[j] + r1[j + 1] + r1[j + 2]
                + r2[j] + r2[j + 1] + r2[j + 2]
            )  # fmt: skip


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _correlate(padded, k, out):  # type: ignore[no-untyped-def]
    """``out(i, j) = Σ_{a, b} k(a, b) padded(i + a, j + b)``."""
    height, width = out.shape
    k00, k01, k02, k10, k11, k12 = k[0, 0], k[0, 1], k[0, 2], k[1, 0], k[1, 1], k[1, 2]
    k20, k21, k22 = k[2, 0], k[2, 1], k[2, 2]
    for i in range(height):
        r0, r1, r2 = padded[i], padded[i + 1], padded[i + 2]
        o = out[i]
        for j in range(width):
            o[j] = (
                k00 * r0[j] + k01 * r0[j + 1] + k02 * r0[j + 2]
                + k10 * r1[j] + k11 * r1[j + 1] + k12 * r1[j + 2]
                + k20 * r2[j] + k21 * r2[j + 1] + k22 * r2[j + 2]
            )  # fmt: skip


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _inverse_counts(length, dtype_like):  # type: ignore[no-untyped-def]
    """One over the number of the three taps centred on each position inside ``length``."""
    inverse = np.empty(length, dtype_like.dtype)
    for i in range(length):
        inverse[i] = 1.0 / ((i + 1 < length) + 1 + (i > 0))
    return inverse


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _box(x_plane, ry, rx, padded, box_padded):  # type: ignore[no-untyped-def]
    """The box average of one plane into the interior of ``box_padded`` (zero border kept)."""
    height, width = x_plane.shape
    padded[1 : height + 1, 1 : width + 1] = x_plane
    inner = box_padded[1 : height + 1, 1 : width + 1]
    _window_sum(padded, inner)
    for i in range(height):
        row = inner[i]
        scale = ry[i]
        for j in range(width):
            row[j] = row[j] * scale * rx[j]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def forward(x, kernel, out):  # type: ignore[no-untyped-def]
    """``out [B, C, H, W]`` from ``x [B, C, H, W]`` and ``kernel [C, 3, 3]``, C-contiguous."""
    batch, channels, height, width = x.shape
    ry, rx = _inverse_counts(height, x), _inverse_counts(width, x)
    padded = np.zeros((height + 2, width + 2), x.dtype)
    box_padded = np.zeros((height + 2, width + 2), x.dtype)
    for b in range(batch):
        for c in range(channels):
            _box(x[b, c], ry, rx, padded, box_padded)
            _correlate(box_padded, kernel[c], out[b, c])


@numba.njit(cache=True, nogil=True, boundscheck=False)
def backward(grad, x, kernel, grad_x, grad_kernel):  # type: ignore[no-untyped-def]
    """``grad_x [B, C, H, W]`` and ``grad_kernel [C, 3, 3]`` (fp64 sums) of :func:`forward`."""
    batch, channels, height, width = x.shape
    ry, rx = _inverse_counts(height, x), _inverse_counts(width, x)
    padded = np.zeros((height + 2, width + 2), x.dtype)
    box_padded = np.zeros((height + 2, width + 2), x.dtype)
    grad_padded = np.zeros((height + 2, width + 2), x.dtype)
    scaled_padded = np.zeros((height + 2, width + 2), x.dtype)
    flipped = np.empty((3, 3), x.dtype)
    sums = np.zeros((9, width), x.dtype)
    for c in range(channels):
        k = kernel[c]
        for a in range(3):
            for e in range(3):
                flipped[a, e] = k[2 - a, 2 - e]
        for b in range(batch):
            _box(x[b, c], ry, rx, padded, box_padded)
            g = grad[b, c]
            grad_padded[1 : height + 1, 1 : width + 1] = g
            # grad_kernel(a, e) = Σ_p g(p) box(p + (a, e) − 1), column sums kept per (a, e).
            sums[:] = 0
            for i in range(height):
                gi = g[i]
                for a in range(3):
                    source = box_padded[i + a]
                    for e in range(3):
                        acc = sums[3 * a + e]
                        for j in range(width):
                            acc[j] += gi[j] * source[j + e]
            for t in range(9):
                total = 0.0
                for j in range(width):
                    total += sums[t, j]
                grad_kernel[c, t // 3, t % 3] += total
            # grad of the box: flip(k) ⋆ g, times r, then the 3×3 window sum.
            inner = scaled_padded[1 : height + 1, 1 : width + 1]
            _correlate(grad_padded, flipped, inner)
            for i in range(height):
                row = inner[i]
                scale = ry[i]
                for j in range(width):
                    row[j] = row[j] * scale * rx[j]
            _window_sum(scaled_padded, grad_x[b, c])
