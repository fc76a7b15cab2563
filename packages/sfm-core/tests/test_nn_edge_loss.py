"""Edge-guidance loss (METHOD.md §1, option): saliency pulled towards label boundaries."""

from __future__ import annotations

import pytest
import torch

from sfm_core.functional import identity_positions
from sfm_core.nn import edge_guidance_loss


def two_regions(batch: int, height: int, width: int, split: int) -> torch.Tensor:
    labels = torch.zeros(batch, height, width, dtype=torch.int64)
    labels[..., split:] = 1
    return labels


def test_logits_peaking_on_the_boundary_beat_flat_logits() -> None:
    labels = two_regions(2, 26, 34, split=18)  # at twice the logits' resolution: resized to 13x17
    columns = torch.arange(17, dtype=torch.float64)
    boundary = 8.5  # between columns 8 and 9 of the 13x17 map
    peaked = (-((columns - boundary) ** 2) / (2 * 2.0**2)).expand(2, 1, 13, 17)
    flat = torch.zeros(2, 1, 13, 17, dtype=torch.float64)
    away = (-((columns - 2.0) ** 2) / (2 * 2.0**2)).expand(2, 1, 13, 17)
    on_edge, uniform = edge_guidance_loss(peaked, labels), edge_guidance_loss(flat, labels)
    assert on_edge < 0.1 * uniform
    assert on_edge < 0.1 * edge_guidance_loss(away, labels)


def test_hand_computed_value_on_one_row() -> None:
    labels = torch.tensor([[[0, 0, 1, 1]]])
    flat = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
    # Boundary pixels 1 and 2; a tiny blur keeps the target [0, 1, 1, 0]; prediction is all ones.
    loss = edge_guidance_loss(flat, labels, sigma=0.1)
    torch.testing.assert_close(loss, torch.tensor(0.5, dtype=torch.float64))
    spike = torch.tensor([[[[-50.0, 0.0, 0.0, -50.0]]]], dtype=torch.float64)
    assert edge_guidance_loss(spike, labels, sigma=0.1) < 1e-20


@pytest.mark.parametrize("row", [[0, 255, 1, 1], [0, 0, 255, 1], [255, 255, 255, 255]])
def test_ignored_pixels_make_no_boundary_and_no_loss(row: list[int]) -> None:
    labels = torch.tensor([[row]])
    flat = torch.zeros(1, 1, 1, 4, dtype=torch.float64, requires_grad=True)
    loss = edge_guidance_loss(flat, labels, sigma=0.1)
    valid = sum(label != 255 for label in row)
    # No boundary: the target is all zero and each valid pixel misses by 1.
    torch.testing.assert_close(
        loss.detach(), torch.tensor(1.0 if valid else 0.0, dtype=torch.float64)
    )
    loss.backward()  # still attached to the graph, even with no valid pixel
    assert flat.grad is not None


def test_custom_ignore_index_and_small_integer_labels() -> None:
    labels = torch.tensor([[[0, 0, 7, 1]]], dtype=torch.uint8)
    flat = torch.zeros(1, 1, 1, 4)
    loss = edge_guidance_loss(flat, labels, ignore_index=7, sigma=0.1)
    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_an_image_without_boundaries_keeps_an_all_zero_target() -> None:
    labels = torch.stack([two_regions(1, 6, 8, 4)[0], torch.full((6, 8), 3)])
    logits = torch.randn(2, 1, 6, 8, dtype=torch.float64)
    both = edge_guidance_loss(logits, labels)
    a = logits[1:, 0]
    prediction = torch.exp(a - a.amax())
    second_alone = edge_guidance_loss(logits[1:], labels[1:])
    torch.testing.assert_close(second_alone, prediction.square().mean())
    torch.testing.assert_close(
        both, (edge_guidance_loss(logits[:1], labels[:1]) + second_alone) / 2
    )


def test_gradient_is_finite_for_huge_and_half_logits() -> None:
    labels = two_regions(1, 9, 11, split=5)
    logits = (torch.randn(1, 1, 9, 11) * 1e4).requires_grad_(True)
    loss = edge_guidance_loss(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    half = edge_guidance_loss(torch.randn(1, 1, 9, 11).half(), labels)
    assert half.dtype == torch.float32
    assert torch.isfinite(half)


def test_non_contiguous_logits_and_labels() -> None:
    labels = two_regions(1, 13, 17, split=6)
    labels[0, 9:, :4] = 2
    logits = torch.randn(1, 1, 13, 17, dtype=torch.float64)
    odd_logits = logits.transpose(2, 3).contiguous().transpose(2, 3)
    odd_labels = labels.transpose(1, 2).contiguous().transpose(1, 2)
    assert not odd_labels.is_contiguous()
    expected = edge_guidance_loss(logits, labels)
    torch.testing.assert_close(edge_guidance_loss(odd_logits, odd_labels), expected)


def test_bad_inputs_raise_naming_the_argument() -> None:
    logits, labels = torch.randn(2, 1, 6, 7), torch.zeros(2, 6, 7, dtype=torch.int64)
    with pytest.raises(ValueError, match="logits must be a 4-D"):
        edge_guidance_loss(logits[:, 0], labels)
    with pytest.raises(ValueError, match="logits must have 1 channel"):
        edge_guidance_loss(torch.randn(2, 2, 6, 7), labels)
    with pytest.raises(ValueError, match="labels must be a 3-D"):
        edge_guidance_loss(logits, labels[0])
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        edge_guidance_loss(logits, labels.float())
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        edge_guidance_loss(logits, labels.bool())
    with pytest.raises(ValueError, match="batch sizes must agree"):
        edge_guidance_loss(logits, labels[:1])
    with pytest.raises(ValueError, match="sigma"):
        edge_guidance_loss(logits, labels, sigma=0.0)
    with pytest.raises(TypeError, match="ignore_index"):
        edge_guidance_loss(logits, labels, ignore_index=255.0)  # type: ignore[arg-type]


def test_full_resolution_target_at_identity_positions_equals_the_stage_target() -> None:
    """Labels at the logits' resolution and a uniform lattice: both targets are the same map."""
    labels = two_regions(2, 13, 17, split=6)
    labels[1, 9:, :4] = 2
    logits = torch.randn(2, 1, 13, 17, dtype=torch.float64)
    positions = identity_positions(2, 13, 17, dtype=torch.float64)
    torch.testing.assert_close(
        edge_guidance_loss(logits, labels, positions=positions), edge_guidance_loss(logits, labels)
    )


def test_full_resolution_target_keeps_a_one_pixel_line_that_the_stage_resize_drops() -> None:
    labels = torch.zeros(1, 64, 64, dtype=torch.int64)
    labels[:, :, 21] = 1  # a 1 px line: nearest resizing to 16x16 samples columns 4k+2 only
    positions = identity_positions(1, 16, 16, dtype=torch.float64)
    columns = torch.arange(16, dtype=torch.float64)
    on_line = (-((columns - 5.0) ** 2) / 2).expand(1, 1, 16, 16)  # column 5 holds x = 21.5/64
    flat = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    # The stage target is empty (no boundary survives): a peak anywhere only costs.
    assert edge_guidance_loss(on_line, labels) < edge_guidance_loss(flat, labels)
    assert edge_guidance_loss(flat, labels) == pytest.approx(1.0)
    full_peak = edge_guidance_loss(on_line, labels, positions=positions)
    assert full_peak < 0.5 * edge_guidance_loss(flat, labels, positions=positions)
    # Read where the samples sit: shifting the lattice by 5 map pixels moves the target along.
    shifted = positions.clone()
    shifted[:, 0] -= 5 / 16
    assert edge_guidance_loss(on_line, labels, positions=shifted) > 2 * full_peak


def test_full_resolution_positions_are_checked() -> None:
    logits, labels = torch.randn(2, 1, 6, 7), torch.zeros(2, 12, 14, dtype=torch.int64)
    with pytest.raises(ValueError, match="positions must be"):
        edge_guidance_loss(logits, labels, positions=torch.rand(2, 2, 6, 6))
