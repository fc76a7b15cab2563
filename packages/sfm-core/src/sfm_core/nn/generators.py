"""Attention-logit generators of ARS (SPEC section 1.1): where the map should be sampled densely.

Each generator maps features ``[B, C, H, W]`` to logits ``[B, 1, H, W]`` and ends in a
zero-initialised convolution, so the logits start constant and ARS starts as the exact identity.

Channels not divisible by 4: the pyramid branches use ``ceil(C / 4)`` channels each (so any model
can take ARS); the parameter count ``C² + 13C + 1`` of the default holds exactly when ``4 | C``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sfm_core.nn._inputs import check_channels

NormLayer = Callable[[int], nn.Module]

GENERATORS = ("avg-lhpf-psp", "avg-psp", "conv")
PYRAMID_BINS = (1, 2, 3, 7)
PYRAMID_REDUCTION = 4
_TAPS = 9
_CENTRE = 4


def zero_init(layer: nn.Module) -> None:
    """Zero every parameter of ``layer``: constant logits, hence an identity ARS at the start."""
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()


class LearnableHighPass(nn.Module):
    """Depthwise unsharp mask ``y = 2x − Σ softmax₉(w_c) ⊙ neighbourhood(x)`` (zero padding).

    ``w_c`` starts at ``[[1,1,1],[1,0,1],[1,1,1]]``: a low-pass that favours the neighbours, so
    ``y = x + (x − lowpass(x))`` boosts detail. ``9C`` parameters, no bias.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = check_channels("channels", channels)
        initial = torch.ones(channels, _TAPS)
        initial[:, _CENTRE] = 0.0
        self.weight = nn.Parameter(initial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lowpass = torch.softmax(self.weight, dim=1).view(self.channels, 1, 3, 3).to(x.dtype)
        return 2.0 * x - F.conv2d(x, lowpass, padding=1, groups=self.channels)


class PyramidContext(nn.Module):
    """PSP context: per bin, adaptive avg pool → 1×1 conv → norm → ReLU → bilinear resize back.

    Returns the input concatenated with the branches: ``channels + 4 * ceil(channels / 4)``
    channels (``out_channels``).
    """

    def __init__(
        self,
        channels: int,
        *,
        bins: tuple[int, ...] = PYRAMID_BINS,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        check_channels("channels", channels)
        reduced = math.ceil(channels / PYRAMID_REDUCTION)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),
                nn.Conv2d(channels, reduced, 1, bias=False),
                norm_layer(reduced),
                nn.ReLU(inplace=True),
            )
            for size in bins
        )
        self.out_channels = channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.branches
        ]
        return torch.cat([x, *pooled], dim=1)


class PyramidAttention(nn.Module):
    """The "avg-lhpf-psp" generator (``high_pass=False`` gives "avg-psp").

    3×3 average pool (stride 1, ``count_include_pad=False``) → optional learnable high-pass →
    pyramid context → 1×1 conv to one logit, zero-initialised.
    """

    def __init__(
        self, channels: int, *, high_pass: bool = True, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.smooth = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.high_pass: nn.Module = LearnableHighPass(channels) if high_pass else nn.Identity()
        self.context = PyramidContext(channels, norm_layer=norm_layer)
        self.project = nn.Conv2d(self.context.out_channels, 1, 1)
        zero_init(self.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.context(self.high_pass(self.smooth(x))))  # type: ignore[no-any-return]


class ConvAttention(nn.Module):
    """The "conv" generator: one 3×3 convolution to a logit, zero-initialised."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(check_channels("channels", channels), 1, 3, padding=1)
        zero_init(self.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x)  # type: ignore[no-any-return]


def build_attention_generator(
    name: str, channels: int, norm_layer: NormLayer = nn.BatchNorm2d
) -> nn.Module:
    """The generator called ``name`` (one of :data:`GENERATORS`) for ``channels`` input channels."""
    if name == "avg-lhpf-psp":
        return PyramidAttention(channels, high_pass=True, norm_layer=norm_layer)
    if name == "avg-psp":
        return PyramidAttention(channels, high_pass=False, norm_layer=norm_layer)
    if name == "conv":
        return ConvAttention(channels)
    raise ValueError(f"generator must be one of {list(GENERATORS)}, got {name!r}")
