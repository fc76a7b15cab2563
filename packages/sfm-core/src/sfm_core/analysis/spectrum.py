"""Power spectra of feature maps (METHOD.md §5): the quantity the aliasing ratio is built on.

Everything runs in float64 on a real FFT (``rfft2``): a real map's spectrum is symmetric, so the
half plane with each column counted by its multiplicity carries the full plane's sums. Each
channel's spatial mean is removed first, and the DC bin is zeroed so that the rounding left by
that subtraction cannot leak into the ratio.
"""

from __future__ import annotations

import torch

from sfm_core._checks import check_positive, check_tensor

# More rings than this only adds empty (NaN) rings, and would allocate without bound.
MAX_BINS = 1 << 20


def as_image_batch(x: object, name: str = "x") -> tuple[torch.Tensor, bool]:
    """``x`` as a finite ``[B, C, H, W]`` tensor, and whether it came as one ``[C, H, W]`` image."""
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x.unsqueeze(0)
        single = True
    else:
        single = False
    batch = check_tensor(name, x, ndim=4, shape_hint="[B, C, H, W] or [C, H, W]")
    if min(batch.shape[1:]) < 1:
        raise ValueError(f"{name} must have C, H, W >= 1, got shape {tuple(batch.shape)}")
    if not bool(torch.isfinite(batch).all()):
        raise ValueError(f"{name} must be finite, got NaN or Inf values")
    return batch, single


def half_plane_power(image: torch.Tensor, *, normalized: bool = False) -> torch.Tensor:
    """Per-channel power ``|FFT2|^2 / (H W)`` of one ``[C, H, W]`` image on the rfft half plane.

    Returns ``[C, H, W // 2 + 1]`` float64; the DC term and every constant channel are zero.
    The image is first scaled by a power of two (exact) so that its largest magnitude is in
    ``[0.5, 1)``: squaring neither overflows nor underflows. ``normalized`` returns the power
    of that scaled image (enough for ratios); otherwise the scale is put back, which can
    overflow to infinity for magnitudes beyond ~1e154.
    """
    data = image.to(torch.float64)
    exponent = torch.frexp(data.abs().amax()).exponent
    data = torch.ldexp(data, -exponent)
    centred = data - data.mean(dim=(-2, -1), keepdim=True)
    # A channel whose deviation from its mean is at float64 rounding level is constant.
    deviation = centred.abs().amax(dim=(-2, -1))
    scale = data.abs().amax(dim=(-2, -1))
    constant = deviation <= 16 * torch.finfo(torch.float64).eps * scale
    power: torch.Tensor = torch.fft.rfft2(centred, norm="ortho").abs().square()
    power[..., 0, 0] = 0.0
    power[constant] = 0.0
    return power if normalized else torch.ldexp(power, 2 * exponent)


def column_multiplicity(width: int, device: torch.device) -> torch.Tensor:
    """How often each rfft column ``[W // 2 + 1]`` occurs in the full ``W``-wide spectrum."""
    multiplicity = torch.full((width // 2 + 1,), 2.0, dtype=torch.float64, device=device)
    multiplicity[0] = 1.0
    if width % 2 == 0:
        multiplicity[-1] = 1.0
    return multiplicity


def frequency_indices(
    height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed integer frequency indices ``ky`` ``[H, 1]`` and ``kx`` ``[1, W // 2 + 1]``.

    Frequency ``u = kx / W`` and ``v = ky / H`` cycles/pixel; integers keep band tests exact.
    """
    ky = torch.arange(height, device=device)
    ky = torch.where(ky < (height + 1) // 2, ky, ky - height).view(-1, 1)  # fftfreq order
    kx = torch.arange(width // 2 + 1, device=device).view(1, -1)
    return ky, kx


def radial_power_spectrum(
    x: torch.Tensor, *, bins: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum: mean power per ring of radial frequency.

    The spectrum of each channel (mean removed) is ``|FFT2|^2 / (H W)``, so its sum over all
    frequencies is the channel's variance times ``H W`` (Parseval); channels are averaged.
    With ``w = 0.5 / bins``, ring ``k = 1..bins`` is centred at ``k w`` and holds the
    frequencies whose radius ``r = sqrt(u^2 + v^2)`` (cycles/pixel) lies in
    ``((k - 1/2) w, (k + 1/2) w]``; ring 1 also takes the few in ``(0, w/2]``. The DC term
    (removed with the mean) and corners beyond ``r = 0.5 + w/2`` are left out.

    Args:
        x: ``[C, H, W]`` or ``[B, C, H, W]`` feature map(s), finite, any floating dtype.
        bins: number of rings; default ``min(H, W) // 2`` (at least 1), for which no ring is
            empty (``w`` is at least the frequency spacing). A ring with no frequency gets NaN.
            At most ``MAX_BINS``.

    Returns:
        ``frequencies`` ``[bins]`` (ring centres ``w, 2w, ..., 0.5``, cycles/pixel) and
        ``power`` ``[bins]`` for one image or ``[B, bins]`` for a batch (average over images
        with ``power.mean(0)``); float64.
    """
    batch, single = as_image_batch(x)
    height, width = batch.shape[-2:]
    if bins is None:
        bins = max(1, min(height, width) // 2)
    check_positive("bins", bins, integer=True, maximum=MAX_BINS)
    device = batch.device
    ky, kx = frequency_indices(height, width, device)
    radius = torch.sqrt((ky / height).square() + (kx / width).square())
    ring = torch.ceil(2 * bins * radius - 0.5).long().clamp_min(1)  # ((k-1/2)w, (k+1/2)w] -> k
    inside = (radius > 0) & (ring <= bins)
    ring = torch.where(inside, ring - 1, 0).flatten()
    weight = column_multiplicity(width, device).view(1, -1) * inside
    counts = torch.zeros(bins, dtype=torch.float64, device=device)
    counts.index_add_(0, ring, weight.flatten())
    totals = torch.zeros(batch.shape[0], bins, dtype=torch.float64, device=device)
    for image, total in zip(batch, totals, strict=True):  # one image at a time bounds memory
        total.index_add_(0, ring, (half_plane_power(image).mean(0) * weight).flatten())
    power_per_ring = totals / counts  # an empty ring gives 0 / 0 = NaN
    if bool(torch.isinf(power_per_ring).any()):
        raise ValueError(
            f"x is too large: values up to {float(batch.abs().amax()):.3g} give a power spectrum "
            "beyond float64's range; scale x down (aliasing_ratio is scale-free)"
        )
    frequencies = torch.arange(1, bins + 1, dtype=torch.float64, device=device) * (0.5 / bins)
    return frequencies, power_per_ring[0] if single else power_per_ring
