"""sfm_d2.demo's view inside a model, on a freshly built micro SFM Mask2Former (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sfm_core.analysis import aliasing_ratio
from sfm_core.functional import identity_positions
from sfm_d2.demo import (
    aliasing_controls,
    ars_diagnostics_over,
    ars_views,
    count_flops,
    downsampling_inputs,
    downsampling_layers,
    load_trained,
    model_aliasing,
)
from sfm_d2.demo.models import normalized_batch

QUICK = Path(__file__).resolve().parents[3] / "projects/SFM-Mask2Former/configs/quick_schedules"
SFM = QUICK / "sfm_maskformer2_swin_micro_finedetail_instant_test.yaml"
BASELINE = QUICK / "maskformer2_swin_micro_finedetail_instant_test.yaml"


@pytest.fixture(scope="module")
def sfm_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return load_trained(SFM, require_weights=False)[1]


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [
        torch.randint(0, 256, (3, 64, 64), generator=generator, dtype=torch.uint8) for _ in range(2)
    ]


def test_downsampling_layers_of_the_swin_backbone(sfm_model: torch.nn.Module) -> None:
    layers = downsampling_layers(sfm_model.backbone)
    assert layers == {
        "patch_embed.proj": "nchw",
        "layers.0.downsample": "nhwc",
        "layers.1.downsample": "nhwc",
        "layers.2.downsample": "nhwc",
    }  # the ARS generators' own pools are not on the feature path


def test_model_aliasing_is_the_ratio_of_what_enters_each_layer(
    sfm_model: torch.nn.Module, images: list[torch.Tensor]
) -> None:
    batch = normalized_batch(sfm_model, images)
    layers = model_aliasing(sfm_model.backbone, [batch])
    inputs = downsampling_inputs(sfm_model.backbone, batch)
    assert [layer.name for layer in layers] == list(inputs)
    for layer in layers:
        assert layer.count == len(images)
        expected = aliasing_ratio(inputs[layer.name], layer.stride).mean().item()
        assert layer.mean == pytest.approx(expected, rel=1e-9)
    assert layers[0].stride == (4, 4)
    assert all(layer.stride == (2, 2) for layer in layers[1:])


def test_aliasing_controls_replace_every_ars_grid(
    sfm_model: torch.nn.Module, images: list[torch.Tensor]
) -> None:
    batch = normalized_batch(sfm_model, images)
    own = {layer.name: layer.mean for layer in model_aliasing(sfm_model.backbone, [batch])}
    controls = aliasing_controls(sfm_model.backbone, [batch])
    assert list(controls) == ["other", "shift", "identity"]
    means = {c: {layer.name: layer.mean for layer in found} for c, found in controls.items()}
    # before any ARS nothing changes; a fresh ARS is the identity; the shift resamples (a blur)
    for control in controls:
        assert means[control]["patch_embed.proj"] == own["patch_embed.proj"]
    first = "layers.0.downsample"
    assert means["identity"][first] == pytest.approx(own[first], abs=1e-6)
    assert means["other"][first] == pytest.approx(own[first], abs=1e-6)
    assert means["shift"][first] < own[first] - 1e-3


def test_ars_diagnostics_of_a_fresh_and_a_warped_model(
    sfm_model: torch.nn.Module, images: list[torch.Tensor]
) -> None:
    batch = normalized_batch(sfm_model, images)
    labels = [torch.zeros(64, 64, dtype=torch.int64) for _ in images]
    for label in labels:
        label[:, 30:32] = 1  # a 2-px line: detail
    fresh = ars_diagnostics_over(sfm_model.backbone, [batch], labels)
    assert list(fresh) == ["res3", "res4", "res5"]
    for values in fresh.values():
        assert values["displacement_mean"] == pytest.approx(0.0, abs=1e-4)
        assert values["magnification_detail"] == pytest.approx(1.0, abs=1e-3)
        assert values["saliency_contrast"] == pytest.approx(1.0)
    generator = sfm_model.backbone.ars["res3"].generator
    last = [m for m in generator.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    saved = last.weight.detach().clone()
    try:
        with torch.no_grad():
            last.weight.normal_(0.0, 0.5)
        warped = ars_diagnostics_over(sfm_model.backbone, [batch], labels)
    finally:
        with torch.no_grad():
            last.weight.copy_(saved)
    assert warped["res3"]["displacement_mean"] > 0.01
    with pytest.raises(ValueError, match="one map per image"):
        ars_diagnostics_over(sfm_model.backbone, [batch], labels[:1])


def test_fresh_ars_samples_the_uniform_lattice(
    sfm_model: torch.nn.Module, images: list[torch.Tensor]
) -> None:
    # ARS starts as the identity (zero-initialised last conv): every composed grid is the
    # uniform lattice of its map and the saliency is 1 everywhere.
    views = ars_views(sfm_model.backbone, normalized_batch(sfm_model, images))
    assert [view.stage for view in views] == ["res3", "res4", "res5"]
    for view, side in zip(views, (16, 8, 4), strict=True):
        assert view.positions.shape == (2, side, side, 2)
        uniform = identity_positions(2, side, side).permute(0, 2, 3, 1) * 2 - 1
        torch.testing.assert_close(view.positions, uniform, atol=1e-5, rtol=0)
        torch.testing.assert_close(view.saliency, torch.ones(2, 1, side, side))


def test_baseline_has_no_ars_views(images: list[torch.Tensor]) -> None:
    _, model = load_trained(BASELINE, require_weights=False)
    batch = normalized_batch(model, images)
    assert ars_views(model.backbone, batch) == []
    assert aliasing_controls(model.backbone, [batch]) == {}
    assert ars_diagnostics_over(model.backbone, [batch], []) == {}


def test_flops_grow_with_the_image(sfm_model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    small, skipped = count_flops(sfm_model, images[0])
    large, _ = count_flops(sfm_model, torch.nn.functional.pad(images[0], (0, 64, 0, 64)))
    assert 3.5 * small < large < 4.5 * small  # 4x the pixels
    assert "aten::embedding_bag" not in skipped  # the reference gather is counted


def test_load_trained_names_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights"):
        load_trained(SFM)
    with pytest.raises(ValueError, match="is not a file"):
        load_trained(SFM, tmp_path / "missing.pth")
