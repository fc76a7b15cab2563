"""numba kernel of the backward of ``grid_sample(x, grid, "bilinear", "border", False)``.

One pass over the output pixels: each pixel's four corner weights are computed once, then a loop
over the channels (innermost, contiguous in the channels-last layout) scatters ``w · grad`` into
the input gradient and accumulates the grid gradient's dot products with the four corner values.
Border padding clamps the source coordinate into the map; a clamped coordinate passes no gradient,
and, as in aten's ``clip_coordinates_set_grad``, neither does one exactly on the first or last
pixel centre (there the function has a kink; the border counts as outside). A corner outside the map (the
far corner of a point on the last row or column) reads zero and receives nothing, as in aten.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _source(coordinate, scale, last, one, half, zero):  # type: ignore[no-untyped-def]
    """The border-clamped source coordinate and ``d source / d coordinate``, in the grid's dtype
    and aten's order of operations (``(g + 1) · size / 2 − 1/2``), so the clamping and the floor
    agree with aten's to the last bit."""
    source = (coordinate + one) * scale - half
    if source <= zero:
        return zero, zero
    if source >= last:
        return last, zero
    return source, scale


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc", "contract"})
def backward(grad, x, grid, grad_x, grad_grid):  # type: ignore[no-untyped-def]
    """``grad_x [B, H, W, C]`` (zeroed by the caller) and ``grad_grid [B, Ho, Wo, 2]``.

    ``grad [B, Ho, Wo, C]`` and ``x [B, H, W, C]`` channels-last, ``grid [B, Ho, Wo, 2]``.
    A far corner outside the map reads a row of zeros and scatters into a scratch row, so the
    channel loop has no branches.
    """
    batch, height, width, channels = x.shape
    out_height, out_width = grid.shape[1], grid.shape[2]
    zeros = np.zeros(channels, x.dtype)
    sink = np.zeros(channels, x.dtype)
    # Weights and sums in the arrays' dtype (float32 math vectorises twice as wide): scalars
    # read back from an array of that dtype.
    typed = np.zeros(5, x.dtype)
    constants = np.array([width / 2, width - 1, height / 2, height - 1, 1.0, 0.5, 0.0], x.dtype)
    scale_x, last_x, scale_y, last_y = constants[0], constants[1], constants[2], constants[3]
    one, half, origin = constants[4], constants[5], constants[6]
    for b in range(batch):
        for oy in range(out_height):
            for ox in range(out_width):
                ix, mult_x = _source(grid[b, oy, ox, 0], scale_x, last_x, one, half, origin)
                iy, mult_y = _source(grid[b, oy, ox, 1], scale_y, last_y, one, half, origin)
                x0, y0 = math.floor(ix), math.floor(iy)
                x1, y1 = x0 + 1, y0 + 1
                fx1, fy1 = ix - x0, iy - y0  # weights of the far corners
                fx0, fy0 = 1.0 - fx1, 1.0 - fy1
                typed[0], typed[1], typed[2], typed[3] = fy0 * fx0, fy0 * fx1, fy1 * fx0, fy1 * fx1
                w00, w01, w10, w11, zero = typed[0], typed[1], typed[2], typed[3], typed[4]
                has_x1, has_y1 = x1 < width, y1 < height
                image, target = x[b], grad_x[b]
                v00, d00 = image[y0, x0], target[y0, x0]
                v01, d01 = (image[y0, x1], target[y0, x1]) if has_x1 else (zeros, sink)
                v10, d10 = (image[y1, x0], target[y1, x0]) if has_y1 else (zeros, sink)
                v11, d11 = (image[y1, x1], target[y1, x1]) if has_x1 and has_y1 else (zeros, sink)
                g = grad[b, oy, ox]
                # d out / d ix = fy0 (v01 − v00) + fy1 (v11 − v10); likewise for iy.
                top, bottom, left, right = zero, zero, zero, zero
                for c in range(channels):
                    gc = g[c]
                    a00, a01, a10, a11 = v00[c], v01[c], v10[c], v11[c]
                    top += gc * (a01 - a00)
                    bottom += gc * (a11 - a10)
                    left += gc * (a10 - a00)
                    right += gc * (a11 - a01)
                    d00[c] += w00 * gc
                    d01[c] += w01 * gc
                    d10[c] += w10 * gc
                    d11[c] += w11 * gc
                grad_grid[b, oy, ox, 0] = mult_x * (fy0 * top + fy1 * bottom)
                grad_grid[b, oy, ox, 1] = mult_y * (fx0 * left + fx1 * right)
