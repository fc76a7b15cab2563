"""ARS, Adaptive Resampling (METHOD.md §1): a local zoom on detail before a downsampling layer."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from sfm_core import ops
from sfm_core.functional.saliency import check_saliency_settings
from sfm_core.nn._inputs import check_backend, check_channels, check_features
from sfm_core.nn.generators import build_attention_generator
from sfm_core.nn.norms import NormLayer


class Resampled(NamedTuple):
    """What ARS returns: the resampled map, where it was sampled, and the attention logits."""

    features: torch.Tensor  # [B, C, H, W], same size and dtype as the input
    grid: torch.Tensor  # [B, H, W, 2], grid_sample convention; not detached
    logits: torch.Tensor  # [B, 1, H, W], for the optional edge-guidance loss


class AdaptiveResampling(nn.Module):
    """Attention logits → saliency-sampler grid → bilinear resample of the input at that grid.

    The generator ends in a zero-initialised convolution, so a fresh module is the identity
    (constant logits give the identity grid). The grid is not detached: the task loss reaches the
    generator through the bilinear resampling.

    Non-finite input stays visible: an image whose logits hold a NaN or infinity (which any NaN
    or infinity in its features produces) gets an all-NaN grid and all-NaN features, and the other
    images of the batch are bit-identical to a run without it. That holds whenever the generator
    treats images separately: in eval mode, or in training with a per-image ``norm_layer``
    (training-mode BatchNorm shares its batch statistics, and with them the NaN).

    Args:
        channels: input channels ``C``.
        generator: one of ``"avg-lhpf-psp"`` (default), ``"avg-psp"``, ``"conv"``.
        window, fwhm, s_min: saliency sampler settings (see :func:`sfm_core.ops.saliency_grid`).
        norm_layer: normalisation of the generator's pyramid branches, called with a channel count.
            With BatchNorm, training needs two or more images per batch (the 1×1 pyramid bin has
            one value per image, as in PSPNet); use SyncBatchNorm or :func:`group_norm` otherwise.
        backend: op backend (see :mod:`sfm_core.ops`); ``None`` follows ``SFM_BACKEND``.
        project_init_std: 0 (METHOD.md): the generator's last conv starts at zero, and the layers
            before it get no gradient until it has moved. > 0: its weight starts normal with
            this std (bias 0), so gradients reach the whole generator from the first step; the
            module then starts near the identity, not exactly at it (displacements of the order
            of ``project_init_std``, in pixels, for unit-scale features).
        detach_generator_input: the generator reads ``x.detach()``: its gradients (the task's
            through the grid and the edge-guidance loss's) stop at its input and do not reach
            the layers before ARS through it; the resampled features still do.
    """

    def __init__(
        self,
        channels: int,
        *,
        generator: str = "avg-lhpf-psp",
        window: int = 5,
        fwhm: float = 3.0,
        s_min: float = 1e-3,
        norm_layer: NormLayer = nn.BatchNorm2d,
        backend: str | None = None,
        project_init_std: float = 0.0,
        detach_generator_input: bool = False,
    ) -> None:
        super().__init__()
        self.channels = check_channels("channels", channels)
        check_saliency_settings(window, fwhm, s_min)
        if isinstance(project_init_std, bool) or not 0 <= project_init_std < math.inf:
            raise ValueError(f"project_init_std must be a number >= 0, got {project_init_std!r}")
        self.window, self.fwhm, self.s_min = window, float(fwhm), float(s_min)
        self.backend = check_backend(backend)
        self.detach_generator_input = bool(detach_generator_input)
        self.generator = build_attention_generator(generator, channels, norm_layer)
        if project_init_std > 0:
            project = self.generator.project
            assert isinstance(project, nn.Conv2d)  # every generator ends in one
            nn.init.normal_(project.weight, std=float(project_init_std))

    def forward(self, x: torch.Tensor) -> Resampled:
        check_features("x", x, channels=self.channels, module=self, shape_hint="[B, C, H, W]")
        logits = self.generator(x.detach() if self.detach_generator_input else x)
        grid = ops.saliency_grid(
            logits, window=self.window, fwhm=self.fwhm, s_min=self.s_min, backend=self.backend
        )
        features = ops.resample(x, grid, backend=self.backend)
        return Resampled(features, grid, logits)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, window={self.window}, fwhm={self.fwhm}, s_min={self.s_min}"
        )
