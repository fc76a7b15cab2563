"""A tiny ARS + MSAU model trains the same on the reference and on the triton backend.

Three SGD steps of conv stem → ARS → stride-2 conv → head → MSAU (non-uniform upsampling and
LPRM back to the stem's 1/4 resolution), once per backend from the same initial weights; losses
and final parameters must agree within the fp32 tolerance. Runs where the kernels can: on CUDA,
or on CPU under ``TRITON_INTERPRET=1`` (the tests-triton nox session).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from sfm_core.functional import compose_positions, identity_positions, resize_positions
from sfm_core.nn import AdaptiveResampling, MultiScaleAdaptiveUpsampling
from sfm_triton.testing import assert_close

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()),
    reason="needs a CUDA device or TRITON_INTERPRET=1 (set before import)",
)
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
CLASSES = 4
STEPS = 3


def group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(1, channels)


class TinySFM(nn.Module):
    def __init__(self, backend: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.ars = AdaptiveResampling(8, window=3, norm_layer=group_norm, backend=backend)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.head = nn.Conv2d(12, CLASSES, 1)
        self.msau = MultiScaleAdaptiveUpsampling(
            CLASSES, CLASSES, dilations=(1, 2), norm_layer=group_norm, backend=backend
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.stem(image)
        batch, _, height, width = features.shape
        resampled = self.ars(features)
        positions = identity_positions(batch, height, width, device=image.device)
        positions = compose_positions(positions, resampled.grid)
        coarse = self.down(resampled.features)
        positions = resize_positions(positions, coarse.shape[-2:])
        return self.msau(self.head(coarse), positions, (height, width))  # type: ignore[no-any-return]


def initial_state() -> dict[str, torch.Tensor]:
    """Random weights everywhere, including ARS's zero-initialised output conv and the LPRM gates,
    so both start away from the identity and every kernel sees non-trivial inputs."""
    torch.manual_seed(0)
    model = TinySFM("reference")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn_like(parameter))
    return model.state_dict()


def train(backend: str, state: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], nn.Module]:
    model = TinySFM(backend).to(DEVICE)
    model.load_state_dict(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        image = torch.randn(2, 3, 27, 21, generator=generator).to(DEVICE)
        labels = torch.randint(0, CLASSES, (2, 7, 6), generator=generator).to(DEVICE)
        loss = nn.functional.cross_entropy(model(image), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses, model


def test_three_steps_agree() -> None:
    state = initial_state()
    reference_losses, reference_model = train("reference", state)
    triton_losses, triton_model = train("triton", state)
    assert_close(torch.stack(triton_losses), torch.stack(reference_losses), msg="losses")
    assert reference_losses[-1] != reference_losses[0]  # the steps moved the model
    for (name, got), (_, expected) in zip(
        triton_model.named_parameters(), reference_model.named_parameters(), strict=True
    ):
        assert_close(got, expected, msg=name)
    # Gradients crossed every kernel: to the layers before resample, saliency_grid, gather and
    # lprm_aggregate.
    reached = dict(reference_model.named_parameters())
    for name in (
        "stem.weight",
        "ars.generator.project.weight",
        "head.weight",
        "msau.relation.gates",
    ):
        assert not torch.equal(reached[name], state[name].to(DEVICE)), f"{name} never trained"
