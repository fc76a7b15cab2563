"""The aliasing ratio (METHOD.md §5): the share of a map's spectrum that a stride-s layer folds.

For a feature map X ``[C, H, W]`` entering a layer of stride s: remove each channel's spatial mean,
take ``P(u, v) = sum_c |FFT2(X_c)(u, v)|^2`` with ``u, v`` in cycles/pixel in ``[-0.5, 0.5)``, and
``AR = sum_A P / sum P`` over the aliasing band ``A = {|u| > 1/(2s) or |v| > 1/(2s)}``: what lies
beyond the Nyquist frequency of the downsampled grid.

Conventions:
* Frequencies exactly on the Nyquist line (``|u| = 1/(2s)``) are *not* in the band (strict
  ``>``, as in METHOD.md §5); band membership is decided in integers, so this holds exactly.
* A map without signal (every channel constant, up to float64 rounding) has AR = 0: there is
  nothing to fold. Constant channels also carry no weight in ``reduction="mean"``.
* Computed in float64 whatever the input dtype, one image at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sfm_core._checks import check_positive
from sfm_core.analysis.spectrum import (
    as_image_batch,
    column_multiplicity,
    frequency_indices,
    half_plane_power,
)

SPECTRA = ("power", "amplitude")
BANDS = ("square", "radial")
REDUCTIONS = ("sum", "mean")


def check_stride(stride: object) -> tuple[int, int]:
    """``stride`` (a positive int or a ``(sy, sx)`` pair of them) as ``(sy, sx)``."""
    if isinstance(stride, Sequence) and not isinstance(stride, str):
        if len(stride) != 2:
            raise ValueError(f"stride must be a positive int or a (sy, sx) pair, got {stride!r}")
        for value in stride:
            check_positive("stride", value, integer=True)
        return int(stride[0]), int(stride[1])
    check_positive("stride", stride, integer=True)
    assert isinstance(stride, int)
    return stride, stride


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming ``name``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return str(value)


def aliasing_band(
    height: int, width: int, stride: tuple[int, int], band: str, device: torch.device
) -> torch.Tensor:
    """Boolean ``[H, W // 2 + 1]`` mask of the rfft half plane beyond the Nyquist line.

    ``square``: ``|u| > 1/(2 sx)`` or ``|v| > 1/(2 sy)``. ``radial``: ``(u sx)^2 + (v sy)^2 > 1/4``
    (the disc of radius ``1/(2s)`` for equal strides). Both evaluated exactly in integers.
    """
    stride_y, stride_x = stride
    ky, kx = frequency_indices(height, width, device)
    if band == "square":
        return (2 * stride_y * ky.abs() > height) | (2 * stride_x * kx > width)
    # (ky sy / H)^2 + (kx sx / W)^2 > 1/4, times 4 H^2 W^2
    return (
        4 * ((ky * stride_y * width).square() + (kx * stride_x * height).square())
        > (height * width) ** 2
    )


def aliasing_ratio(
    x: torch.Tensor,
    stride: int | tuple[int, int] = 2,
    *,
    spectrum: str = "power",
    band: str = "square",
    reduction: str = "sum",
) -> torch.Tensor:
    """Aliasing ratio of each image in ``x`` for a layer of stride ``stride`` (see module doc).

    Args:
        x: ``[C, H, W]`` (one image) or ``[B, C, H, W]``; finite, any floating dtype.
        stride: the layer's stride, an int or ``(sy, sx)``; the Nyquist line is ``1/(2s)``.
        spectrum: ``"power"`` sums ``|F|^2`` (METHOD.md §5); ``"amplitude"`` sums ``|F|``.
        band: ``"square"`` (METHOD.md §5, the square pass band of the downsampled grid) or
            ``"radial"`` (everything outside the disc of radius ``1/(2s)``).
        reduction: ``"sum"`` (METHOD.md §5) is the ratio of the channel-summed spectrum;
            ``"mean"`` is the mean over non-constant channels of each channel's own ratio.

    Returns:
        float64 tensor on ``x``'s device: a scalar for ``[C, H, W]``, ``[B]`` for a batch; each
        value in ``[0, 1]``.
    """
    batch, single = as_image_batch(x)
    stride_yx = check_stride(stride)
    spectrum = check_choice("spectrum", spectrum, SPECTRA)
    band = check_choice("band", band, BANDS)
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    height, width = batch.shape[-2:]
    device = batch.device
    outside = aliasing_band(height, width, stride_yx, band, device)
    multiplicity = column_multiplicity(width, device)
    ratios = torch.zeros(batch.shape[0], dtype=torch.float64, device=device)
    for number, image in enumerate(batch):  # one image at a time bounds memory
        density = half_plane_power(image, normalized=True)  # ratios are scale-free
        if spectrum == "amplitude":
            density = density.sqrt()
        density = density * multiplicity
        folded = (density * outside).sum(dim=(-2, -1))  # per channel
        total = density.sum(dim=(-2, -1))
        if reduction == "sum":
            folded, total = folded.sum(), total.sum()
        carries_signal = total > 0
        per_channel = torch.where(carries_signal, folded / total.clamp_min(1e-300), 0.0)
        if carries_signal.any():
            ratios[number] = per_channel[carries_signal].mean()
    return ratios[0] if single else ratios
