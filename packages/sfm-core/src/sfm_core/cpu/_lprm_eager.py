"""The weighted dilated 3x3 aggregation in plain PyTorch, used when numba is not installed.

Fused by hand rather than left to autograd: the forward accumulates the nine shifted views of one
replicate-padded copy in place, the backward scatters into one zero-filled padded buffer (autograd
of the reference allocates a padded-size zero buffer per tap) and folds the padding back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TAPS = 9


def _steps(v: torch.Tensor, dilation: int) -> tuple[int, int]:
    """Tap spacing per axis: a dilation past the map reads what ``H - 1`` / ``W - 1`` reads."""
    height, width = v.shape[-2:]
    return min(dilation, height - 1), min(dilation, width - 1)


def _view(
    padded: torch.Tensor, tap: int, steps: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    dy, dx = (tap // 3) * steps[0], (tap % 3) * steps[1]
    return padded[:, :, dy : dy + size[0], dx : dx + size[1]]


def forward(v: torch.Tensor, weights: torch.Tensor, dilation: int) -> torch.Tensor:
    """``out(c, p) = sum_n weights(n, p) v(c, clamp(p + dilation o_n))``."""
    step_y, step_x = _steps(v, dilation)
    size = (v.shape[2], v.shape[3])
    padded = F.pad(v, (step_x, step_x, step_y, step_y), mode="replicate")
    out = _view(padded, 0, (step_y, step_x), size) * weights[:, :1]
    for tap in range(1, TAPS):
        out.addcmul_(_view(padded, tap, (step_y, step_x), size), weights[:, tap : tap + 1])
    return out


def backward(
    grad: torch.Tensor, v: torch.Tensor, weights: torch.Tensor, dilation: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_v, grad_weights)`` of :func:`forward`."""
    step_y, step_x = _steps(v, dilation)
    size = (v.shape[2], v.shape[3])
    padding = [step_x, step_x, step_y, step_y]
    padded = F.pad(v, padding, mode="replicate")
    grad_padded = torch.zeros_like(padded)
    grad_weights = torch.empty_like(weights)
    for tap in range(TAPS):
        steps = (step_y, step_x)
        grad_weights[:, tap] = (grad * _view(padded, tap, steps, size)).sum(dim=1)
        _view(grad_padded, tap, steps, size).addcmul_(grad, weights[:, tap : tap + 1])
    grad_v = torch.ops.aten.replication_pad2d_backward(grad_padded, v, padding)
    return grad_v, grad_weights
