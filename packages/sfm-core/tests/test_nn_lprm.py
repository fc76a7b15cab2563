"""LocalPixelRelation cascade (METHOD.md §3.2): structure, identity at init, gating."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfm_core.functional import lprm_aggregate
from sfm_core.nn import LocalPixelRelation


def randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)


def manual_cascade(
    lprm: LocalPixelRelation, values: torch.Tensor, guide: torch.Tensor
) -> torch.Tensor:
    """METHOD.md §3.2's formula written out, for a module built with ``norm_layer=nn.Identity``."""
    relation = F.conv2d(guide, lprm.seed[0].weight, padding=1).relu()
    out = values
    for step, dilation in enumerate(lprm.dilations):
        padded = F.pad(relation, (dilation,) * 4, mode="replicate")
        relation = F.conv2d(padded, lprm.relations[step][0].weight, dilation=dilation)
        aggregated = lprm_aggregate(out, relation, dilation)
        out = aggregated if lprm.gates is None else out + lprm.gates[step] * (aggregated - out)
    return out


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize(
    ("dilations", "height", "width"), [((1, 2, 4, 8, 16), 13, 17), ((3,), 6, 5)]
)
def test_matches_the_cascade_definition(
    gated: bool, dilations: tuple[int, ...], height: int, width: int
) -> None:
    lprm = LocalPixelRelation(5, dilations, gated=gated, norm_layer=nn.Identity).double()
    randomize(lprm)
    values = torch.randn(2, 3, height, width, dtype=torch.float64)
    guide = torch.randn(2, 5, height, width, dtype=torch.float64)
    expected = manual_cascade(lprm, values, guide)
    torch.testing.assert_close(lprm(values, guide), expected, rtol=0, atol=1e-12)
    assert (expected - values).abs().max() > 1e-3


@pytest.mark.parametrize("training", [True, False])
def test_gated_cascade_starts_as_the_exact_identity(training: bool) -> None:
    lprm = LocalPixelRelation(6).double().train(training)
    values = torch.randn(2, 3, 13, 17, dtype=torch.float64)
    guide = torch.randn(2, 6, 13, 17, dtype=torch.float64)
    assert torch.equal(lprm(values, guide), values)


def dominant(lprm: LocalPixelRelation, tap: int) -> None:
    """Every relation step gives logit 40 to ``tap`` and 0 to the others (BN in eval mode)."""
    lprm.eval()
    with torch.no_grad():
        for conv, norm in lprm.relations:
            conv.weight.zero_()
            norm.bias.zero_()
            norm.bias[tap] = 40.0


def test_dominant_centre_logits_leave_the_values_unchanged() -> None:
    lprm = LocalPixelRelation(4, gated=False).double()
    dominant(lprm, tap=4)
    values = torch.randn(1, 3, 13, 17, dtype=torch.float64)
    guide = torch.randn(1, 4, 13, 17, dtype=torch.float64)
    torch.testing.assert_close(lprm(values, guide), values, rtol=0, atol=1e-12)


def test_a_dominant_side_tap_shifts_by_the_dilation_with_edge_clamping() -> None:
    lprm = LocalPixelRelation(4, (2,), gated=False).double()
    dominant(lprm, tap=5)  # offset (dy, dx) = (0, +1) * dilation
    values = torch.randn(1, 3, 7, 9, dtype=torch.float64)
    out = lprm(values, torch.randn(1, 4, 7, 9, dtype=torch.float64))
    columns = torch.arange(9).add(2).clamp_max(8)
    torch.testing.assert_close(out, values[..., columns], rtol=0, atol=1e-12)


def test_gates_interpolate_between_identity_and_the_ungated_form() -> None:
    ungated = LocalPixelRelation(4, (1, 4), gated=False).double().eval()
    randomize(ungated)
    gated = LocalPixelRelation(4, (1, 4), gated=True).double().eval()
    gated.load_state_dict({**ungated.state_dict(), "gates": gated.gates.detach()})
    values = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    guide = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    free = ungated(values, guide)
    assert (free - values).abs().max() > 1e-3
    assert torch.equal(gated(values, guide), values)
    with torch.no_grad():
        gated.gates.fill_(1.0)
    torch.testing.assert_close(gated(values, guide), free, rtol=0, atol=1e-12)
    assert "gates" not in ungated.state_dict()


def test_gradients_reach_gates_relations_and_values() -> None:
    lprm = LocalPixelRelation(4, (1, 2)).double()
    values = torch.randn(2, 3, 9, 10, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    (lprm(values, guide) * torch.randn(2, 3, 9, 10, dtype=torch.float64)).sum().backward()
    assert lprm.gates.grad is not None
    assert lprm.gates.grad.abs().min() > 0
    assert values.grad is not None
    with torch.no_grad():
        lprm.gates.fill_(0.5)
    lprm.zero_grad()
    (lprm(values, guide) * torch.randn(2, 3, 9, 10, dtype=torch.float64)).sum().backward()
    for name, parameter in lprm.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().max() > 0, name


@pytest.mark.parametrize("kind", ["channels_last", "transposed"])
def test_non_contiguous_inputs_and_batch_one(kind: str) -> None:
    lprm = LocalPixelRelation(5, (1, 3)).double().eval()
    randomize(lprm)
    values = torch.randn(1, 3, 13, 17, dtype=torch.float64)
    guide = torch.randn(1, 5, 13, 17, dtype=torch.float64)
    if kind == "channels_last":
        odd_values = values.contiguous(memory_format=torch.channels_last)
        odd_guide = guide.contiguous(memory_format=torch.channels_last)
    else:
        odd_values = values.transpose(2, 3).contiguous().transpose(2, 3)
        odd_guide = guide.transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(lprm(odd_values, odd_guide), lprm(values, guide), rtol=0, atol=1e-12)


def test_half_values_keep_their_dtype() -> None:
    lprm = LocalPixelRelation(4, (1, 2)).eval()
    randomize(lprm)
    values = torch.randn(1, 3, 6, 7)
    out = lprm(values.bfloat16(), torch.randn(1, 4, 6, 7))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("guide_channels", [19, 256])
def test_parameter_count(guide_channels: int) -> None:
    seed = 9 * guide_channels * 9 + 2 * 9  # 3x3 conv to 9 relation logits, BN
    steps = 5 * (9 * 9 * 9 + 2 * 9 + 1)  # per dilation: 3x3 conv 9->9, BN, gate
    count = sum(p.numel() for p in LocalPixelRelation(guide_channels).parameters())
    assert count == seed + steps
    if guide_channels == 19:  # a Cityscapes logit map as guide: "LPRM under 10 k" (METHOD.md §6)
        assert count < 10_000


def test_bad_inputs_raise_naming_the_argument() -> None:
    lprm = LocalPixelRelation(4)
    values, guide = torch.randn(2, 3, 6, 7), torch.randn(2, 4, 6, 7)
    with pytest.raises(ValueError, match="guide must have 4 channels"):
        lprm(values, torch.randn(2, 5, 6, 7))
    with pytest.raises(ValueError, match="values must be a 4-D"):
        lprm(torch.randn(3, 6, 7), guide)
    with pytest.raises(ValueError, match="values and guide must share H, W"):
        lprm(torch.randn(2, 3, 6, 8), guide)
    with pytest.raises(ValueError, match="batch sizes must agree"):
        lprm(torch.randn(1, 3, 6, 7), guide)
    with pytest.raises(TypeError, match="values must have a floating dtype"):
        lprm(values.long(), guide)
    with pytest.raises(TypeError, match="guide must have the module's dtype"):
        lprm(values, guide.double())


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0,), "guide_channels"),
        ((4, ()), "dilations"),
        ((4, (1, 0)), "dilations"),
        ((4, "12"), "dilations"),
        ((4, (1, 2.0)), "dilations"),
    ],
)
def test_bad_settings_raise_at_construction(args: tuple[object, ...], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LocalPixelRelation(*args)  # type: ignore[arg-type]
