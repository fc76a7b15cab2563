"""Attention-logit generators of ARS (METHOD.md §1, step 1): where the map should be sampled densely.

Each generator maps features ``[B, C, H, W]`` to logits ``[B, 1, H, W]`` and ends in a
zero-initialised convolution, so the logits start constant and ARS starts as the exact identity.

Channels not divisible by 4: the pyramid branches use ``ceil(C / 4)`` channels each (so any model
can take ARS); the parameter count ``C² + 13C + 1`` of the default holds exactly when ``4 | C``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from sfm_core import ops
from sfm_core.functional.box_high_pass import box_average
from sfm_core.nn._inputs import check_channels, check_dilations, check_features
from sfm_core.nn.norms import NormLayer, build_norm, check_single_value_norm

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


class BoxAverage(nn.Module):
    """3×3 mean over the pixels inside the map (``AvgPool2d(3, 1, 1, count_include_pad=False)``).

    See :func:`sfm_core.functional.box_average` (a depthwise convolution with ones, faster).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return box_average(x)


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

    def kernel(self, dtype: torch.dtype) -> torch.Tensor:
        """The depthwise kernel ``2δ − softmax₉(w_c)``, ``[C, 1, 3, 3]`` in ``dtype``."""
        lowpass = torch.softmax(self.weight, dim=1).view(self.channels, 1, 3, 3).to(dtype)
        kernel = -lowpass
        kernel[:, :, 1, 1] += 2.0
        return kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features("x", x, channels=self.channels, module=self, shape_hint="[B, C, H, W]")
        # One depthwise pass with the kernel 2δ − lowpass (same values up to fp32 rounding).
        return F.conv2d(x, self.kernel(x.dtype), padding=1, groups=self.channels)


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
        self.channels = check_channels("channels", channels)
        self.bins = check_dilations(bins, name="bins")
        reduced = math.ceil(channels / PYRAMID_REDUCTION)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),
                nn.Conv2d(channels, reduced, 1, bias=False),
                build_norm(norm_layer, reduced),
                nn.ReLU(inplace=True),
            )
            for size in self.bins
        )
        self.out_channels = channels + reduced * len(bins)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise on a map this context cannot take, before torch fails deep inside a branch."""
        check_features("x", x, channels=self.channels, module=self, shape_hint="[B, C, H, W]")
        for size, branch in zip(self.bins, self.branches, strict=True):
            if size == 1:
                check_single_value_norm(cast(nn.Sequential, branch)[2], x, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.branches
        ]
        return torch.cat([x, *pooled], dim=1)

    def projected(self, x: torch.Tensor, project: nn.Conv2d) -> torch.Tensor:
        """``project(self(x))`` for a 1×1 ``project``, without building the concatenation.

        A 1×1 convolution commutes with the bilinear resize (both are linear, one across channels,
        one across pixels), so each branch is projected at its bin size and only its projection
        is resized: the ``channels``-wide maps of the branches never reach full resolution. Equal
        to ``project(self(x))`` up to the order of the sums (fp32 rounding).
        """
        self.check_input(x)
        channels = x.shape[1]
        weight = project.weight
        out = F.conv2d(x, weight[:, :channels], project.bias)
        start = channels
        for branch in self.branches:
            reduced = branch(x)
            part = F.conv2d(reduced, weight[:, start : start + reduced.shape[1]])
            start += reduced.shape[1]
            out = out + F.interpolate(
                part, size=out.shape[-2:], mode="bilinear", align_corners=False
            )
        return out


class PyramidAttention(nn.Module):
    """The "avg-lhpf-psp" generator (``high_pass=False`` gives "avg-psp").

    3×3 average pool (stride 1, ``count_include_pad=False``) → optional learnable high-pass →
    pyramid context → 1×1 conv to one logit, zero-initialised.
    """

    def __init__(
        self, channels: int, *, high_pass: bool = True, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.smooth = BoxAverage()
        self.high_pass: nn.Module = LearnableHighPass(channels) if high_pass else nn.Identity()
        self.context = PyramidContext(channels, norm_layer=norm_layer)
        self.project = nn.Conv2d(self.context.out_channels, 1, 1)
        zero_init(self.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.context.check_input(x)  # before the box average meets an empty or foreign map
        if isinstance(self.high_pass, LearnableHighPass):
            # Smoothing and high-pass as one op (fused on the CPU: sfm_core.cpu).
            detail = ops.box_high_pass(x, self.high_pass.kernel(x.dtype))
        else:
            detail = self.smooth(x)
        return self.context.projected(detail, self.project)


class ConvAttention(nn.Module):
    """The "conv" generator: one 3×3 convolution to a logit, zero-initialised."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = check_channels("channels", channels)
        self.project = nn.Conv2d(channels, 1, 3, padding=1)
        zero_init(self.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features("x", x, channels=self.channels, module=self, shape_hint="[B, C, H, W]")
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
