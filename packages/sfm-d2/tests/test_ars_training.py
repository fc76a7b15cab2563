"""ARS that learns: the full-resolution edge target, the generator's last-layer initialisation,
the detached generator input, and the ARS diagnostics written to detectron2's EventStorage."""

from __future__ import annotations

import pytest
import torch
from detectron2.utils.events import EventStorage

from sfm_core.nn import AdaptiveResampling, ars_diagnostics

from .test_m2f_model import batch, build, perturb_ars, tiny_cfg

FIELDS = (
    "displacement_mean",
    "displacement_max",
    "displacement_detail",
    "magnification_detail",
    "magnification_background",
    "saliency_contrast",
)


def test_diagnostics_reach_the_event_storage_every_period() -> None:
    model = build(tiny_cfg("MODEL.SFM.DIAGNOSTICS_PERIOD", 2))
    perturb_ars(model)
    with EventStorage(start_iter=4) as storage:
        model(batch())
        written = storage.latest()
    want = {f"ars/{stage}/{name}" for stage in ("res3", "res4", "res5") for name in FIELDS}
    assert {k for k in written if k.startswith("ars/")} == want
    assert written["ars/res3/displacement_max"][0] > 0  # perturbed ARS: the samples moved
    with EventStorage(start_iter=5) as storage:  # not a multiple of the period
        model(batch())
        assert not any(k.startswith("ars/") for k in storage.latest())
    off = build(tiny_cfg("MODEL.SFM.DIAGNOSTICS_PERIOD", 0))
    with EventStorage(start_iter=4) as storage:
        off(batch())
        assert not any(k.startswith("ars/") for k in storage.latest())
    model(batch())  # no storage open: nothing to write, no error


def test_logged_diagnostics_are_those_of_the_backbone_grids() -> None:
    """The model recomputes each grid from the logits: the same grid the ARS module used."""
    model = build(tiny_cfg("MODEL.SFM.DIAGNOSTICS_PERIOD", 1))
    perturb_ars(model)
    model.eval()
    grids = {}
    for stage, module in model.backbone.ars.items():
        module.register_forward_hook(
            lambda _m, _a, out, stage=stage: grids.__setitem__(stage, out.grid)
        )
    images = model.preprocess_image(batch()).tensor
    with torch.no_grad():
        model.backbone(images)
    model.train()
    with EventStorage(start_iter=0) as storage:
        model(batch())
        written = storage.latest()
    for stage, grid in grids.items():
        want = ars_diagnostics(grid).displacement_mean
        got = written[f"ars/{stage}/displacement_mean"][0]
        assert got == pytest.approx(want, rel=1e-4), stage


@pytest.mark.parametrize("target", ["full", "stage"])
def test_edge_loss_targets_both_train_the_generator(target: str) -> None:
    model = build(tiny_cfg("MODEL.SFM.EDGE_TARGET", target))
    perturb_ars(model)
    edge = model(batch())["loss_edge"]
    assert model.edge_loss_weight == 100.0  # the default: on, at the authors' weight
    assert torch.isfinite(edge)
    edge.backward()
    project = model.backbone.ars["res3"].generator.project.weight
    assert project.grad is not None
    assert project.grad.abs().sum() > 0


def test_full_and_stage_targets_differ_on_thin_structures() -> None:
    """A 1 px line at 64 px: invisible to the 1/4-resolution stage target, seen by the full one."""
    inputs = batch()
    for x in inputs:
        x["sem_seg"][:, 21] = 1
    losses = {}
    for target in ("full", "stage"):
        model = build(tiny_cfg("MODEL.SFM.EDGE_TARGET", target))
        perturb_ars(model)
        images = model.preprocess_image(inputs)
        with torch.no_grad():
            edge = model.edge_loss(model.backbone(images.tensor), inputs, images)
        losses[target] = float(edge)
    assert losses["full"] != pytest.approx(losses["stage"], rel=1e-3)


def test_project_init_std_lets_gradients_reach_the_whole_generator() -> None:
    grads = {}
    for std in (0.0, 1e-3):
        model = build(tiny_cfg("MODEL.SFM.ARS_PROJECT_INIT_STD", std))
        project = model.backbone.ars["res3"].generator.project
        assert not project.bias.any()
        if std:
            assert float(project.weight.detach().std()) == pytest.approx(std, rel=0.5)
        losses = model(batch())
        torch.stack(list(losses.values())).sum().backward()
        branch = model.backbone.ars["res3"].generator.context.branches[0][1].weight
        grads[std] = branch.grad.abs().sum()
    assert grads[0.0] == 0  # zero init (METHOD.md §1): nothing before the last conv learns at first
    assert grads[1e-3] > 0


def test_project_init_std_starts_near_the_identity() -> None:
    torch.manual_seed(0)
    ars = AdaptiveResampling(32, project_init_std=1e-5)
    x = torch.randn(2, 32, 20, 24)
    out = ars(x)
    moved = ars_diagnostics(out.grid).displacement_max
    assert 0 < moved < 1e-3
    torch.testing.assert_close(out.features, x, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="project_init_std must be a number >= 0"):
        AdaptiveResampling(32, project_init_std=-1.0)


def test_detached_generator_input_keeps_the_edge_gradient_out_of_the_backbone() -> None:
    reached = {}
    for detach in (False, True):
        model = build(tiny_cfg("MODEL.SFM.ARS_DETACH_GENERATOR_INPUT", detach))
        perturb_ars(model)
        model(batch())["loss_edge"].backward()
        embed = model.backbone.patch_embed.proj.weight.grad
        reached[detach] = embed is not None and bool(embed.abs().sum() > 0)
        project = model.backbone.ars["res3"].generator.project.weight.grad
        assert project is not None
        assert project.abs().sum() > 0
    assert reached == {False: True, True: False}
