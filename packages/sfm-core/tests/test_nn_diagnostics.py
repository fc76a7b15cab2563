"""ars_diagnostics and label_detail: displacement, magnification and saliency contrast of ARS."""

from __future__ import annotations

import math

import pytest
import torch

from sfm_core import ops
from sfm_core.functional import compose_positions, identity_positions
from sfm_core.nn import ArsDiagnostics, ars_diagnostics, label_detail


def identity_grid(batch: int, height: int, width: int) -> torch.Tensor:
    return 2 * identity_positions(batch, height, width).permute(0, 2, 3, 1) - 1


def stripe_detail(batch: int, height: int, width: int, column: int) -> torch.Tensor:
    detail = torch.zeros(batch, height, width, dtype=torch.bool)
    detail[:, :, column] = True
    return detail


def test_the_identity_does_not_move_or_magnify() -> None:
    grid = identity_grid(2, 12, 17)
    found = ars_diagnostics(grid, torch.zeros(2, 1, 12, 17), stripe_detail(2, 48, 68, 20))
    assert found.displacement_mean == pytest.approx(0, abs=1e-5)
    assert found.displacement_max == pytest.approx(0, abs=1e-5)
    assert found.displacement_detail == pytest.approx(0, abs=1e-5)
    assert found.magnification_detail == pytest.approx(1, abs=1e-5)
    assert found.magnification_background == pytest.approx(1, abs=1e-5)
    assert found.saliency_contrast == pytest.approx(1, abs=1e-6)


def test_a_uniform_zoom_by_two_magnifies_four_times_and_moves_points_as_computed() -> None:
    height, width = 9, 13
    grid = 0.5 * identity_grid(1, height, width)  # points pulled halfway to the centre
    found = ars_diagnostics(grid, detail=torch.ones(1, height, width, dtype=torch.bool))
    assert found.magnification_detail == pytest.approx(4, rel=1e-5)
    # The farthest points are the corners: half their distance to the centre, in pixels.
    corner = math.hypot((width - 1) / 2, (height - 1) / 2) / 2
    assert found.displacement_max == pytest.approx(corner, rel=1e-5)
    assert math.isnan(found.magnification_background)  # no background: empty region


def test_a_saliency_peak_on_detail_zooms_on_it() -> None:
    height = width = 24
    logits = torch.zeros(1, 1, height, width)
    logits[..., 11:13] = 3.0  # salient columns 11 and 12
    grid = ops.saliency_grid(logits, window=5, fwhm=3.0, s_min=1e-3)
    detail = stripe_detail(1, 4 * height, 4 * width, 4 * 11 + 3)  # a 1 px line in the image
    found = ars_diagnostics(grid, logits, detail)
    assert found.magnification_detail > 1.3
    assert found.magnification_background < 1.0
    assert found.displacement_detail > 0.3
    assert found.saliency_contrast > 10
    assert found.displacement_max <= 5 + 1e-4  # never more than the window half-size


def test_detail_is_looked_up_at_the_image_positions_of_a_warped_input() -> None:
    """The same grid on an input map that sits elsewhere in the image sees other detail."""
    height = width = 16
    grid = identity_grid(1, height, width)
    detail = torch.zeros(1, height, width, dtype=torch.bool)
    detail[:, :, :8] = True  # left half of the image
    uniform = ars_diagnostics(grid, detail=detail)
    # An input map that covers only the right half of the image: no sample lies on detail.
    shifted = identity_positions(1, height, width)
    shifted[:, 0] = 0.5 + shifted[:, 0] / 2
    moved = ars_diagnostics(grid, detail=detail, input_positions=shifted)
    assert uniform.magnification_detail == pytest.approx(1, abs=1e-5)
    assert math.isnan(moved.magnification_detail)
    assert moved.magnification_background == pytest.approx(1, abs=1e-5)
    # compose_positions is what places the samples: a zoom on the left half is found there.
    torch.testing.assert_close(compose_positions(shifted, grid), shifted)


def test_without_detail_only_displacements_are_defined() -> None:
    found = ars_diagnostics(identity_grid(1, 5, 6), torch.zeros(1, 1, 5, 6))
    values = found.as_dict()
    assert set(values) == {f.name for f in ArsDiagnostics.__dataclass_fields__.values()}
    assert values["displacement_mean"] == pytest.approx(0, abs=1e-5)
    for key in ("displacement_detail", "magnification_detail", "saliency_contrast"):
        assert math.isnan(values[key])


def test_bad_inputs_name_the_argument() -> None:
    grid = identity_grid(2, 4, 4)
    with pytest.raises(TypeError, match="detail must be a bool mask"):
        ars_diagnostics(grid, detail=torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="detail must have the grid's batch 2"):
        ars_diagnostics(grid, detail=torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="logits must be"):
        ars_diagnostics(grid, torch.zeros(2, 1, 3, 4), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="input_positions must be"):
        ars_diagnostics(
            grid,
            detail=torch.zeros(2, 4, 4, dtype=torch.bool),
            input_positions=torch.rand(2, 2, 3, 3),
        )


def test_label_detail_covers_thin_structures_whole_and_skips_ignored_pixels() -> None:
    labels = torch.zeros(1, 9, 12, dtype=torch.long)
    labels[:, :, 5:8] = 1  # a 3 px line
    labels[:, 0, :] = 255  # an ignored row
    detail = label_detail(labels)
    assert detail[0, 1:, 4:9].all()  # the line and one pixel either side
    assert not detail[0, 1:, :3].any()
    assert not detail[0, 1:, 10:].any()
    assert not detail[0, 0].any()
    rim = label_detail(labels, radius=0)
    assert rim[0, 1:, 4:6].all()
    assert rim[0, 1:, 7:9].all()
    assert not rim[0, 1:, 6].any()  # the centre of the line has no other label beside it
    with pytest.raises(ValueError, match="radius must be an int >= 0"):
        label_detail(labels, radius=-1)
