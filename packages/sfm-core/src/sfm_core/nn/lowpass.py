"""A fixed low-pass before a downsampling layer: the anti-aliasing an aliasing-minded user adds.

BlurPool (Zhang, "Making convolutional networks shift-invariant again", ICML 2019) blurs with a
fixed binomial filter before subsampling. Here the blur runs before the network's own
downsampling layer, which then runs unchanged: the same place as ARS, a fixed alternative to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sfm_core._checks import check_nonempty_map, check_tensor

# Binomial taps by filter size (rows of Pascal's triangle); the kernel is normalised to sum 1.
BINOMIAL = {3: (1.0, 2.0, 1.0), 5: (1.0, 4.0, 6.0, 4.0, 1.0)}


class LowPass(nn.Module):
    """Depthwise ``size x size`` binomial blur, stride 1, same size out; no parameters.

    Odd sizes are centred; reflect padding keeps the border from darkening (as BlurPool). The
    kernel is a non-persistent buffer: checkpoints are unchanged by adding this module.

    Args:
        size: filter taps per axis, 3 (``[1, 2, 1] / 4``, BlurPool's default) or 5; even sizes
            would shift the map by half a pixel and are refused.
    """

    def __init__(self, size: int = 3) -> None:
        super().__init__()
        if size not in (3, 5):
            raise ValueError(f"size must be 3 or 5 (odd binomial filters), got {size!r}")
        self.size = size
        self.kernel: torch.Tensor
        taps = torch.tensor(BINOMIAL[size], dtype=torch.float64)
        kernel = torch.outer(taps, taps)
        self.register_buffer("kernel", (kernel / kernel.sum()).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, ndim=4, shape_hint="[B, C, H, W]")
        check_nonempty_map("x", x, "[B, C, H, W]")
        channels = x.shape[1]
        pad = self.size // 2
        weight = self.kernel.to(x.dtype).expand(channels, 1, self.size, self.size)
        mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode=mode), weight, groups=channels)

    def extra_repr(self) -> str:
        return f"size={self.size}"
