"""Small models written for the insertion tests: a ResNet-, a ConvNeXt- and a Swin-style backbone.

Each returns its stage outputs (a list of maps), as a segmentation backbone would.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block; a strided first conv comes with a strided 1×1 shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + shortcut)


class TinyResNet(nn.Module):
    """Stem (conv s2 + max pool s2) and four stages of basic blocks; stages 2-4 start with stride 2."""

    def __init__(self, widths: tuple[int, ...] = (8, 12, 16, 20)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        inplanes = widths[0]
        for index, planes in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = nn.Sequential(
                BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1)
            )
            self.add_module(f"layer{index + 1}", stage)
            inplanes = planes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            outputs.append(x)
        return outputs


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7×7 conv → LayerNorm → pointwise MLP, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    """Patchify stem (4×4 s4) and four stages; downsampling = LayerNorm2d + 2×2 conv stride 2."""

    def __init__(self, widths: tuple[int, ...] = (8, 12, 16, 20)) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, widths[0], 4, stride=4), LayerNorm2d(widths[0]))]
        )
        for previous, current in itertools.pairwise(widths):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(previous), nn.Conv2d(previous, current, 2, stride=2))
            )
        self.stages = nn.ModuleList(ConvNeXtBlock(width) for width in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
            outputs.append(x)
        return outputs


class PatchMerging(nn.Module):
    """Swin patch merging on NHWC maps: concatenate each 2×2 patch, LayerNorm, linear 4C → 2C."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * channels)
        self.reduction = nn.Linear(4 * channels, 2 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))  # odd sizes: pad bottom/right like Swin
        merged = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(merged))


class SwinishBlock(nn.Module):
    """Stand-in for a Swin block on NHWC maps: spatial mixing by a depthwise conv, then an MLP."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(x))


class TinySwin(nn.Module):
    """Patch embedding (4×4 s4) to NHWC, four stages, patch merging between them."""

    def __init__(self, embed: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed, 4, stride=4)
        widths = [embed * 2**index for index in range(4)]
        self.stages = nn.ModuleList(SwinishBlock(width) for width in widths)
        self.merges = nn.ModuleList(PatchMerging(width) for width in widths[:-1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        outputs = []
        for index, stage in enumerate(self.stages):
            if index > 0:
                x = self.merges[index - 1](x)
            x = stage(x)
            outputs.append(x.permute(0, 3, 1, 2))
        return outputs
