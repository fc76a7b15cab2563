"""sfm_d2.engine.solver: parameter groups and LR multipliers, clipping, WarmupPolyLR values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone, build_model
from torch import nn

from sfm_core.nn import AdaptiveResampling, LocalPixelRelation
from sfm_d2.engine.solver import (
    WarmupPolyLR,
    build_lr_scheduler,
    build_optimizer,
    parameter_groups,
    warmup_factor,
)

TINY_MASK2FORMER = Path(__file__).parent / "configs" / "tiny_mask2former.yaml"
BASE_LR, BACKBONE_MULT, SFM_MULT = 1e-3, 0.1, 2.0
DECAY, DECAY_NORM, DECAY_EMBED = 0.05, 1e-3, 1e-2


class ToyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.ars = AdaptiveResampling(8, generator="conv", norm_layer=lambda c: nn.GroupNorm(1, c))
        self.relative_position_bias_table = nn.Parameter(torch.randn(5, 2))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = ToyBackbone()
        self.linear = nn.Linear(8, 4)
        self.norm = nn.LayerNorm(4)
        self.embed = nn.Embedding(6, 4)
        self.tied = nn.Linear(4, 6, bias=False)
        self.tied.weight = self.embed.weight  # shared: must appear once
        self.lprm = LocalPixelRelation(8, dilations=(1, 2), norm_layer=nn.BatchNorm2d)


@pytest.fixture
def solver_cfg(cfg: CfgNode) -> CfgNode:
    return configure_solver(cfg)


def configure_solver(cfg: CfgNode) -> CfgNode:
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.BACKBONE_MULTIPLIER = BACKBONE_MULT
    cfg.MODEL.SFM.LR_MULTIPLIER = SFM_MULT
    cfg.MODEL.SFM.ARS_LR_MULTIPLIER = 1.0  # tested on its own below
    cfg.SOLVER.WEIGHT_DECAY = DECAY
    cfg.SOLVER.WEIGHT_DECAY_NORM = DECAY_NORM
    cfg.SOLVER.WEIGHT_DECAY_EMBED = DECAY_EMBED
    return cfg


def settings_by_parameter(groups: list[dict]) -> dict[int, tuple[float, float]]:
    settings: dict[int, tuple[float, float]] = {}
    for group in groups:
        for parameter in group["params"]:
            assert id(parameter) not in settings, "a parameter is in two groups"
            settings[id(parameter)] = (group["lr"], group["weight_decay"])
    return settings


def test_parameter_groups_lr_and_weight_decay(solver_cfg: CfgNode) -> None:
    model = ToyModel()
    settings = settings_by_parameter(parameter_groups(solver_cfg, model))
    backbone_lr, sfm_lr = BASE_LR * BACKBONE_MULT, BASE_LR * SFM_MULT
    expected = {
        model.backbone.conv.weight: (backbone_lr, DECAY),
        model.backbone.conv.bias: (backbone_lr, DECAY),
        model.backbone.bn.weight: (backbone_lr, DECAY_NORM),
        model.backbone.relative_position_bias_table: (backbone_lr, 0.0),
        model.linear.weight: (BASE_LR, DECAY),
        model.norm.bias: (BASE_LR, DECAY_NORM),
        model.embed.weight: (BASE_LR, DECAY_EMBED),
    }
    for parameter, setting in expected.items():
        assert settings[id(parameter)] == pytest.approx(setting)
    # Every SFM parameter, in the backbone or the head, at the SFM LR (its norms undecayed).
    for module in (model.backbone.ars, model.lprm):
        for submodule in module.modules():
            for parameter in submodule.parameters(recurse=False):
                decay = (
                    DECAY_NORM if isinstance(submodule, (nn.GroupNorm, nn.BatchNorm2d)) else DECAY
                )
                assert settings[id(parameter)] == pytest.approx((sfm_lr, decay))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(settings) == trainable  # frozen ones left out, the tied weight once


def test_parameter_groups_record_names(solver_cfg: CfgNode) -> None:
    groups = parameter_groups(solver_cfg, ToyModel())
    names = {name for group in groups for name in group["param_names"]}
    assert "backbone.relative_position_bias_table" in names
    assert "embed.weight" in names
    assert "tied.weight" not in names
    assert all(len(g["params"]) == len(g["param_names"]) for g in groups)


def test_sfm_parameters_of_a_built_backbone(solver_cfg: CfgNode) -> None:
    """ARS modules are found by type in a real SFM ResNet, wherever they are registered."""
    solver_cfg.MODEL.BACKBONE.NAME = "build_sfm_resnet_backbone"
    solver_cfg.MODEL.RESNETS.DEPTH = 18
    solver_cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    solver_cfg.MODEL.RESNETS.NORM = "BN"
    solver_cfg.MODEL.SFM.ARS_STAGES = ["res3", "res5"]
    model = nn.Module()
    model.backbone = build_backbone(solver_cfg)
    settings = settings_by_parameter(parameter_groups(solver_cfg, model))
    ars = {id(p) for p in model.backbone.ars.parameters()}
    assert ars
    assert all(settings[i][0] == pytest.approx(BASE_LR * SFM_MULT) for i in ars)
    others = [i for i in settings if i not in ars]
    assert others
    assert all(settings[i][0] == pytest.approx(BASE_LR * BACKBONE_MULT) for i in others)


def test_adamw_and_sgd(solver_cfg: CfgNode) -> None:
    optimizer = build_optimizer(solver_cfg, ToyModel())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx(
        sorted({BASE_LR, BASE_LR * BACKBONE_MULT, BASE_LR * SFM_MULT})
    )
    solver_cfg.SOLVER.OPTIMIZER = "SGD"
    solver_cfg.SOLVER.MOMENTUM = 0.7
    optimizer = build_optimizer(solver_cfg, ToyModel())
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.7 for g in optimizer.param_groups)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("SOLVER.OPTIMIZER", "ADAGRAD", "SOLVER.OPTIMIZER"),
        ("MODEL.SFM.LR_MULTIPLIER", -1.0, "MODEL.SFM.LR_MULTIPLIER"),
        ("SOLVER.BACKBONE_MULTIPLIER", "x", "SOLVER.BACKBONE_MULTIPLIER"),
    ],
)
def test_bad_solver_settings(solver_cfg: CfgNode, key: str, value: object, match: str) -> None:
    node, name = solver_cfg, key.split(".")
    for part in name[:-1]:
        node = node[part]
    node[name[-1]] = value
    with pytest.raises(ValueError, match=match):
        build_optimizer(solver_cfg, ToyModel())


def two_parameter_step(cfg: CfgNode) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step (lr 1, no momentum) with gradients [3, 0] and [0, 4]: global norm 5."""
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(2))
    model.b = nn.Parameter(torch.zeros(2))
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    optimizer = build_optimizer(cfg, model)
    model.a.grad = torch.tensor([3.0, 0.0])
    model.b.grad = torch.tensor([0.0, 4.0])
    optimizer.step()
    return model.a.detach(), model.b.detach()


def test_full_model_clipping_clips_the_global_norm(cfg: CfgNode) -> None:
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    a, b = two_parameter_step(cfg)
    torch.testing.assert_close(a, torch.tensor([-0.6, 0.0]))
    torch.testing.assert_close(b, torch.tensor([0.0, -0.8]))


def test_other_clip_types_are_detectron2s_per_parameter(cfg: CfgNode) -> None:
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    a, b = two_parameter_step(cfg)
    torch.testing.assert_close(a, torch.tensor([-1.0, 0.0]))
    torch.testing.assert_close(b, torch.tensor([0.0, -1.0]))


def test_no_clipping_when_disabled(cfg: CfgNode) -> None:
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    a, b = two_parameter_step(cfg)
    torch.testing.assert_close(a, torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(b, torch.tensor([0.0, -4.0]))


def test_full_model_clipping_needs_a_positive_value(cfg: CfgNode) -> None:
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.0
    with pytest.raises(ValueError, match="CLIP_VALUE"):
        build_optimizer(cfg, ToyModel())


class SfmPair(nn.Module):
    """One plain parameter ``a`` and one inside an SFM module (an LPRM's gates)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.lprm = LocalPixelRelation(4, dilations=(1, 2), norm_layer=nn.BatchNorm2d)


def sfm_clipped_step(cfg: CfgNode, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step (lr 1) with gradient [3, 0] on ``a`` and [0, 4] on the LPRM gates, the rest 0,
    under a full-model clip of 1 and ``MODEL.SFM.GRADIENT_CLIP = mode`` (own clip value 2)."""
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.MODEL.SFM.GRADIENT_CLIP = mode
    cfg.MODEL.SFM.CLIP_VALUE = 2.0
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    model = SfmPair()
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.a.grad = torch.tensor([3.0, 0.0])
    assert model.lprm.gates is not None
    model.lprm.gates.grad = torch.tensor([0.0, 4.0])
    optimizer.step()
    return model.a.detach(), model.lprm.gates.detach()


@pytest.mark.parametrize(
    ("mode", "want_a", "want_gates"),
    [
        ("model", [-0.6, 0.0], [0.0, -0.8]),  # one global norm of 5, clipped to 1
        ("separate", [-1.0, 0.0], [0.0, -2.0]),  # 3 clipped to 1, 4 clipped to 2 on its own
        ("none", [-1.0, 0.0], [0.0, -4.0]),  # only the plain parameter is clipped
    ],
)
def test_sfm_gradient_clip_modes(
    cfg: CfgNode, mode: str, want_a: list[float], want_gates: list[float]
) -> None:
    a, gates = sfm_clipped_step(cfg, mode)
    torch.testing.assert_close(a, torch.tensor(want_a))
    torch.testing.assert_close(gates, torch.tensor(want_gates))


def test_separate_sfm_clip_without_full_model_clipping(cfg: CfgNode) -> None:
    """Clipping disabled: the SFM parameters are still clipped on their own when "separate"."""
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    cfg.MODEL.SFM.GRADIENT_CLIP = "separate"
    cfg.MODEL.SFM.CLIP_VALUE = 2.0
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    model = SfmPair()
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.a.grad = torch.tensor([3.0, 0.0])
    model.lprm.gates.grad = torch.tensor([0.0, 4.0])
    optimizer.step()
    torch.testing.assert_close(model.a.detach(), torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(model.lprm.gates.detach(), torch.tensor([0.0, -2.0]))


def test_an_unknown_sfm_clip_mode_is_refused(cfg: CfgNode) -> None:
    cfg.MODEL.SFM.GRADIENT_CLIP = "sometimes"
    with pytest.raises(ValueError, match=r"MODEL\.SFM\.GRADIENT_CLIP must be one of"):
        build_optimizer(cfg, ToyModel())


def test_ars_lr_multiplier_applies_to_ars_only(solver_cfg: CfgNode) -> None:
    solver_cfg.MODEL.SFM.ARS_LR_MULTIPLIER = 10.0
    model = ToyModel()
    settings = settings_by_parameter(parameter_groups(solver_cfg, model))
    for p in model.backbone.ars.parameters():
        assert settings[id(p)][0] == pytest.approx(BASE_LR * SFM_MULT * 10.0)
    for p in model.lprm.parameters():
        assert settings[id(p)][0] == pytest.approx(BASE_LR * SFM_MULT)
    solver_cfg.MODEL.SFM.ARS_LR_MULTIPLIER = -1.0
    with pytest.raises(ValueError, match=r"MODEL\.SFM\.ARS_LR_MULTIPLIER"):
        parameter_groups(solver_cfg, model)


def scheduled_lrs(steps: int, base_lrs: tuple[float, ...] = (0.1,), **kwargs: object) -> list:
    """LRs of every group at iterations 0..steps-1, stepping as detectron2's trainer does."""
    params = [nn.Parameter(torch.ones(1)) for _ in base_lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs, strict=True)]
    optimizer = torch.optim.SGD(groups, lr=base_lrs[0])
    scheduler = WarmupPolyLR(optimizer, **kwargs)  # type: ignore[arg-type]
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def test_poly_values_without_warmup() -> None:
    lrs = scheduled_lrs(12, max_iters=10, warmup_iters=0, power=0.9)
    for t in (0, 1, 5, 9):
        assert lrs[t][0] == pytest.approx(0.1 * (1 - t / 10) ** 0.9)
    assert lrs[10][0] == 0.0
    assert lrs[11][0] == 0.0


def test_linear_warmup_then_poly() -> None:
    lrs = scheduled_lrs(6, max_iters=10, warmup_iters=4, warmup_factor=0.1, power=1.0)
    assert lrs[0][0] == pytest.approx(0.1 * 0.1)
    assert lrs[2][0] == pytest.approx(0.1 * (0.1 * 0.5 + 0.5) * 0.8)
    assert lrs[4][0] == pytest.approx(0.1 * 0.6)
    constant = scheduled_lrs(
        2, max_iters=10, warmup_iters=4, warmup_factor=0.25, warmup_method="constant"
    )
    assert constant[1][0] == pytest.approx(0.1 * 0.25 * 0.9**0.9)


def test_constant_ending_floors_the_factor_after_warmup() -> None:
    lrs = scheduled_lrs(10, max_iters=10, warmup_iters=0, power=0.9, constant_ending=0.2)
    assert lrs[3][0] == pytest.approx(0.1 * 0.7**0.9)
    assert lrs[9][0] == pytest.approx(0.1 * 0.2)  # 0.1 ** 0.9 = 0.126 < 0.2


def test_groups_keep_their_ratio() -> None:
    lrs = scheduled_lrs(5, base_lrs=(0.1, 0.01), max_iters=8, warmup_iters=2)
    for first, second in lrs:
        assert second == pytest.approx(first / 10)


def test_warmup_factor_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="warmup method"):
        warmup_factor("cosine", 0, 10, 0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iters": 0}, "max_iters"),
        ({"max_iters": 10, "warmup_iters": -1}, "warmup_iters"),
        ({"max_iters": 10, "warmup_method": "exp"}, "warmup_method"),
        ({"max_iters": 10, "constant_ending": 1.5}, "constant_ending"),
        ({"max_iters": 10, "power": -1.0}, "power"),
    ],
)
def test_warmup_poly_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match=match):
        WarmupPolyLR(optimizer, **kwargs)


def test_scheduler_state_resumes_the_schedule() -> None:
    """A scheduler restored from a state dict continues exactly where the first one was."""
    kwargs = {"max_iters": 10, "warmup_iters": 3, "power": 0.9}
    straight = scheduled_lrs(8, **kwargs)
    parameter = nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = WarmupPolyLR(optimizer, **kwargs)  # type: ignore[arg-type]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    resumed = WarmupPolyLR(fresh_optimizer, **kwargs)  # type: ignore[arg-type]
    resumed.load_state_dict(state)
    fresh_optimizer.step()
    resumed.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(straight[6][0])


def test_build_lr_scheduler_by_name(cfg: CfgNode) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.WARMUP_ITERS = 10
    cfg.SOLVER.POLY_LR_POWER = 0.5
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.1
    scheduler = build_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, WarmupPolyLR)
    # detectron2's LRScheduler hook checkpoints only _LRScheduler instances.
    assert isinstance(scheduler, torch.optim.lr_scheduler._LRScheduler)
    assert (scheduler.max_iters, scheduler.warmup_iters) == (100, 10)
    assert (scheduler.power, scheduler.constant_ending) == (0.5, 0.1)
    assert scheduler.factor(50) == pytest.approx(math.sqrt(0.5))
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    assert not isinstance(build_lr_scheduler(cfg, optimizer), WarmupPolyLR)


def test_lr_multipliers_on_the_sfm_mask2former(cfg: CfgNode) -> None:
    """The built model: ARS (backbone) and LPRM (head) at the SFM LR, the rest as Mask2Former."""
    cfg.merge_from_file(str(TINY_MASK2FORMER))
    solver_cfg = configure_solver(cfg)
    model = build_model(solver_cfg)
    settings = settings_by_parameter(parameter_groups(solver_cfg, model))
    sfm = {
        id(p): prefix
        for prefix, module in model.named_modules()
        if isinstance(module, (AdaptiveResampling, LocalPixelRelation))
        for p in module.parameters()
    }
    assert any(prefix.startswith("backbone.") for prefix in sfm.values())
    assert any(prefix.startswith("sem_seg_head.") for prefix in sfm.values())
    for name, parameter in model.named_parameters():
        if id(parameter) in sfm:
            expected = BASE_LR * SFM_MULT
        elif name.startswith("backbone."):
            expected = BASE_LR * BACKBONE_MULT
        else:
            expected = BASE_LR
        assert settings[id(parameter)][0] == pytest.approx(expected), name
