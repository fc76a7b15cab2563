"""Grid controls of the aliasing report: the mechanics that separate modulation from blur."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfm_core.analysis import (
    CONTROLS,
    aliasing_ratio,
    aliasing_report,
    aliasing_with_controls,
    control_grid,
    grid_control,
)
from sfm_core.nn import AdaptiveResampling


class ArsThenDown(nn.Module):
    """ARS (the 'conv' generator) feeding a stride-2 conv: the smallest model with one ARS."""

    def __init__(self, warped: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ars = AdaptiveResampling(3, generator="conv", norm_layer=nn.Identity)
        if warped:  # a trained-looking generator: logits that vary over the image
            with torch.no_grad():
                self.ars.generator.project.weight.normal_(0.0, 2.0)
        self.down = nn.Conv2d(3, 4, 2, stride=2)
        self.grids: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resampled = self.ars(x)
        self.grids.append(resampled.grid)
        return self.down(resampled.features)


def sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_own_is_the_grid_other_is_the_previous_image_s() -> None:
    grid = torch.rand(3, 5, 6, 2) * 2 - 1
    assert control_grid(grid, "own") is grid
    other = control_grid(grid, "other")
    for image in range(3):
        assert torch.equal(other[image], grid[image - 1])  # every image gets another's grid


def test_other_refuses_a_single_image() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        control_grid(torch.zeros(1, 4, 4, 2), "other")


def test_identity_grid_returns_the_input() -> None:
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    grid = control_grid(torch.zeros(2, 7, 9, 2, dtype=torch.float64), "identity")
    torch.testing.assert_close(sample(x, grid), x)


def test_half_pixel_shift_averages_each_two_by_two_block() -> None:
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    shifted = sample(x, control_grid(torch.zeros(2, 7, 9, 2, dtype=torch.float64), "shift"))
    blocks = F.avg_pool2d(x, 2, stride=1)  # mean of x[i:i+2, j:j+2]
    torch.testing.assert_close(shifted[..., :-1, :-1], blocks)
    # the last row/column stays on the last pixel centre along its axis (clamped)
    torch.testing.assert_close(shifted[..., -1, -1], x[..., -1, -1])


@pytest.mark.parametrize("shift", [0, 1.0, -1.5, float("nan"), True, "half"])
def test_bad_shift_is_named(shift: object) -> None:
    with pytest.raises(ValueError, match="shift must be"):
        control_grid(torch.zeros(2, 4, 4, 2), "shift", shift)  # type: ignore[arg-type]


def test_bad_control_is_named() -> None:
    with pytest.raises(ValueError, match="control must be one of"):
        control_grid(torch.zeros(2, 4, 4, 2), "mirror")
    with pytest.raises(ValueError, match="control must be one of"):
        aliasing_report(ArsThenDown(False), [torch.randn(2, 3, 8, 8)], control="mirror")


@pytest.mark.parametrize("control", ["other", "shift", "identity"])
def test_controls_need_an_ars(control: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2))
    with pytest.raises(ValueError, match="needs a model with ARS"), grid_control(model, control):
        pass
    with grid_control(model, "own"):  # nothing to replace: fine
        model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("control", CONTROLS)
def test_the_model_resamples_at_the_control_grid_and_the_hook_leaves(control: str) -> None:
    model = ArsThenDown(warped=True).eval()
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        own = model(x)
        own_grid = model.grids[-1]
        with grid_control(model, control):
            controlled = model(x)
        used = model.grids[-1]
        after = model(x)
    torch.testing.assert_close(used, control_grid(own_grid, control))
    torch.testing.assert_close(controlled, model.down(sample(x, used)))
    torch.testing.assert_close(after, own)  # hooks removed
    if control != "own":
        assert not torch.allclose(controlled, own)


def test_hooks_are_removed_on_error() -> None:
    model = ArsThenDown(warped=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="boom"), grid_control(model, "shift"):
        raise RuntimeError("boom")
    with torch.no_grad():
        model(x)
    assert torch.equal(model.grids[-1], model.ars(x).grid)


def batches() -> list[torch.Tensor]:
    torch.manual_seed(3)
    return [torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)]


def test_fresh_ars_own_equals_identity_and_the_input_s_ratio() -> None:
    data = batches()
    result = aliasing_with_controls(ArsThenDown(warped=False), data, names=["down"])
    direct = torch.cat([aliasing_ratio(b, 2) for b in data]).mean().item()
    assert result.mean("identity", "down") == pytest.approx(direct, abs=1e-6)
    assert result.mean("own", "down") == pytest.approx(direct, abs=1e-6)  # ARS is the identity
    # any off-centre resampling is a low-pass: white noise loses aliasing power
    assert result.mean("shift", "down") < direct - 0.1
    assert result.modulation("identity", "down") == pytest.approx(0.0, abs=1e-6)


def test_other_equals_own_when_every_image_is_the_same() -> None:
    torch.manual_seed(4)
    same = [torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1).contiguous()]
    result = aliasing_with_controls(ArsThenDown(warped=True), same, controls=("own", "other"))
    assert result.mean("other", "down") == pytest.approx(result.mean("own", "down"), abs=1e-9)
    different = aliasing_with_controls(
        ArsThenDown(warped=True), batches(), controls=("own", "other")
    )
    assert different.mean("other", "down") != pytest.approx(different.mean("own", "down"), abs=1e-4)


def test_table_and_dict_list_every_layer_and_control() -> None:
    result = aliasing_with_controls(ArsThenDown(warped=True), batches())
    assert list(result.as_dict()) == ["down"]
    assert set(result.as_dict()["down"]) == set(CONTROLS)
    table = result.table()
    assert (
        table.splitlines()[0] == "| layer | stride | AR own | AR other | AR shift | AR identity |"
    )
    assert "| down | 2x2 |" in table
    with pytest.raises(ValueError, match="layer must be one of"):
        result.mean("own", "up")
    with pytest.raises(ValueError, match="controls must be distinct"):
        aliasing_with_controls(ArsThenDown(False), batches(), controls=("own", "own"))
