"""Checks shared by the ResNet, Swin and ConvNeXt backbone tests (one copy, three backbones)."""

from __future__ import annotations

import torch
from torch import nn

from sfm_d2.modeling.backbone import positions_key
from sfm_d2.modeling.backbone.levels import LEVELS


def image(batch: int = 2, height: int = 67, width: int = 93, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def perturb_ars(model: nn.Module, seed: int = 0) -> None:
    """Give every ARS parameter random values (a fresh ARS is the identity by design)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("ars."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def assert_fresh_ars_is_plain_and_trained_ars_warps(
    plain: nn.Module, sfm: nn.Module, x: torch.Tensor
) -> None:
    """A fresh ARS gives the plain features and positions; perturbed, it changes res3..res5 only.

    The features of a level are tapped before the ARS that follows it, so res2 never changes.
    """
    with torch.no_grad():
        want = plain(x)
        fresh = sfm(x)  # a fresh ARS resamples at the identity grid
        perturb_ars(sfm)
        warped = sfm(x)
    for level in LEVELS:
        torch.testing.assert_close(fresh[level], want[level], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fresh[positions_key(level)], want[positions_key(level)])
    assert torch.equal(warped["res2"], want["res2"])
    for level in LEVELS[1:]:
        assert not torch.allclose(warped[level], want[level], atol=1e-3), level


def assert_task_loss_reaches_every_ars(model: nn.Module, x: torch.Tensor) -> None:
    out = model(x)
    sum(out[level].square().mean() for level in LEVELS).backward()
    for stage, ars in model.ars.items():
        grad = ars.generator.project.weight.grad
        assert grad is not None, stage
        assert grad.abs().sum() > 0, stage
