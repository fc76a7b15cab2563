"""MultiScaleAdaptiveUpsampling (METHOD.md §3): demodulation then the LPRM cascade."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sfm_core.functional import identity_positions, nonuniform_upsample
from sfm_core.nn import LocalPixelRelation, MultiScaleAdaptiveUpsampling

from .conftest import warped_positions


def randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)


@pytest.mark.parametrize(("batch", "lattice", "size"), [(1, (5, 7), (13, 17)), (2, (4, 4), (9, 8))])
@pytest.mark.parametrize("training", [True, False])
def test_starts_as_plain_nonuniform_upsampling(
    batch: int, lattice: tuple[int, int], size: tuple[int, int], training: bool
) -> None:
    msau = MultiScaleAdaptiveUpsampling(6, 6).double().train(training)
    z = torch.randn(batch, 6, *lattice, dtype=torch.float64)
    positions = warped_positions(batch, *lattice)
    out = msau(z, positions, size)
    assert out.shape == (batch, 6, *size)
    assert torch.equal(out, nonuniform_upsample(z, positions, size))


@pytest.mark.parametrize("training", [True, False])
def test_starts_as_bilinear_resizing_on_an_unwarped_lattice(training: bool) -> None:
    # SFM at initialisation is the plain model: unwarped features are resized bilinearly.
    msau = MultiScaleAdaptiveUpsampling(4, 4).double().train(training)
    z = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    out = msau(z, identity_positions(2, 7, 9, dtype=torch.float64), (15, 20))
    expected = nn.functional.interpolate(z, (15, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_method_chooses_the_nonuniform_upsampling() -> None:
    msau = MultiScaleAdaptiveUpsampling(3, 3, method="triangles").double()
    z = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    positions = warped_positions(1, 5, 6)
    expected = nonuniform_upsample(z, positions, (11, 13), method="triangles")
    assert torch.equal(msau(z, positions, (11, 13)), expected)
    assert not torch.equal(expected, nonuniform_upsample(z, positions, (11, 13)))
    with pytest.raises(ValueError, match=r"method must be one of \['quads', 'triangles'\]"):
        MultiScaleAdaptiveUpsampling(3, 3, method="bilinear")


def test_open_gates_refine_with_the_lprm_cascade() -> None:
    msau = MultiScaleAdaptiveUpsampling(4, 3, (1, 2, 4)).double().eval()
    randomize(msau)
    z = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    positions = warped_positions(2, 5, 6)
    guide = torch.randn(2, 3, 11, 13, dtype=torch.float64)
    plain = nonuniform_upsample(z, positions, (11, 13))
    out = msau(z, positions, (11, 13), guide)
    assert (out - plain).abs().max() > 1e-3
    lprm = LocalPixelRelation(3, (1, 2, 4)).double().eval()
    lprm.load_state_dict(msau.relation.state_dict())
    torch.testing.assert_close(out, lprm(plain, guide), rtol=0, atol=0)


def test_without_guide_the_upsampled_values_guide_themselves() -> None:
    msau = MultiScaleAdaptiveUpsampling(5, 5, (1, 3)).double().eval()
    randomize(msau)
    z = torch.randn(1, 5, 4, 6, dtype=torch.float64)
    positions = warped_positions(1, 4, 6)
    plain = nonuniform_upsample(z, positions, (9, 11))
    torch.testing.assert_close(msau(z, positions, (9, 11)), msau.relation(plain, plain))


def test_uniform_positions_of_a_linear_ramp_are_reproduced_at_init() -> None:
    msau = MultiScaleAdaptiveUpsampling(2, 2).double()
    positions = identity_positions(1, 6, 8, dtype=torch.float64)
    z = positions * torch.tensor([3.0, -2.0], dtype=torch.float64).view(1, 2, 1, 1)
    out = msau(z, positions, (12, 16))
    inner = identity_positions(1, 12, 16, dtype=torch.float64)[..., 1:-1, 1:-1]
    expected = inner * torch.tensor([3.0, -2.0], dtype=torch.float64).view(1, 2, 1, 1)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected, rtol=0, atol=1e-12)


def test_gradients_reach_z_and_the_gates() -> None:
    msau = MultiScaleAdaptiveUpsampling(3, 3, (1, 2)).double()
    z = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    out = msau(z, warped_positions(2, 5, 5), (10, 9))
    (out * torch.randn_like(out)).sum().backward()
    assert z.grad is not None
    assert z.grad.abs().max() > 0
    assert msau.relation.gates.grad is not None
    assert msau.relation.gates.grad.abs().min() > 0


def test_non_contiguous_z_gives_the_same_result() -> None:
    msau = MultiScaleAdaptiveUpsampling(3, 3, (1, 2)).double().eval()
    randomize(msau)
    z = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    positions = warped_positions(1, 5, 7)
    transposed = z.transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(
        msau(transposed, positions, (13, 17)), msau(z, positions, (13, 17)), rtol=0, atol=1e-12
    )


def test_bad_inputs_raise_naming_the_argument() -> None:
    msau = MultiScaleAdaptiveUpsampling(4, 3)
    z, positions = torch.randn(2, 4, 5, 6), warped_positions(2, 5, 6, dtype=torch.float32)
    guide = torch.randn(2, 3, 10, 12)
    with pytest.raises(ValueError, match="guide_channels"):
        msau(z, positions, (10, 12))
    with pytest.raises(ValueError, match="guide must be"):
        msau(z, positions, (10, 12), torch.randn(2, 3, 10, 11))
    with pytest.raises(ValueError, match="guide must have 3 channels"):
        msau(z, positions, (10, 12), torch.randn(2, 4, 10, 12))
    with pytest.raises(ValueError, match="batch sizes must agree"):
        msau(z, positions, (10, 12), torch.randn(1, 3, 10, 12))
    with pytest.raises(ValueError, match="z must have 4 channels"):
        msau(torch.randn(2, 5, 5, 6), positions, (10, 12), guide)
    with pytest.raises(ValueError, match="positions and z must share h, w"):
        msau(z, warped_positions(2, 5, 7, dtype=torch.float32), (10, 12), guide)
    with pytest.raises(ValueError, match="positions must have 2 channels"):
        msau(z, torch.rand(2, 3, 5, 6), (10, 12), guide)
    with pytest.raises(TypeError, match="size"):
        msau(z, positions, 10, guide)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="z must have the module's dtype"):
        msau(z.double(), positions, (10, 12), guide)
    with pytest.raises(ValueError, match="channels"):
        MultiScaleAdaptiveUpsampling(0, 3)
