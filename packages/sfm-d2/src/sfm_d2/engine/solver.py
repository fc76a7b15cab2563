"""Optimizer and LR schedule of Mask2Former-style training, with an LR multiplier for SFM modules.

Mask2Former trains AdamW with the pretrained backbone at a tenth of the head's LR, no weight decay
on norms, embeddings and Swin's position tables, the global gradient norm clipped to 0.01 and
DeepLab's poly schedule (mask2former-map.md §1.10). SFM adds modules that no checkpoint has (ARS
in the backbone, MSAU/LPRM in the head); ``MODEL.SFM.LR_MULTIPLIER`` sets their LR,
``MODEL.SFM.ARS_LR_MULTIPLIER`` multiplies it for the samplers (ARS), and
``MODEL.SFM.GRADIENT_CLIP`` says whether their gradients share the full-model clip ("model"),
are clipped on their own ("separate", to ``MODEL.SFM.CLIP_VALUE``) or not at all ("none").
Mask2Former's 0.01 full-model clip is set by the head's large gradients; inside it, the small
gradients of a fresh ARS shrink to Adam's epsilon scale and the samplers barely move.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as detectron2_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

from sfm_core.nn import AdaptiveResampling, LocalPixelRelation, MultiScaleAdaptiveUpsampling
from sfm_d2.config import GRADIENT_CLIPS

# Modules whose parameters (and their submodules') are SFM's: new, never in a pretrained file.
SFM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    AdaptiveResampling,
    MultiScaleAdaptiveUpsampling,
    LocalPixelRelation,
)
NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, detectron2's NaiveSyncBN
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,  # also timm's LayerNorm2d (a subclass)
    nn.LocalResponseNorm,
)
# Parameters Swin declares as tables/embeddings rather than weights: never decayed (official Swin).
NO_DECAY_PARAMETER_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
OPTIMIZERS = ("ADAMW", "SGD")
WARMUP_METHODS = ("constant", "linear")


def _walk(
    module: nn.Module, prefix: str, in_backbone: bool, in_sfm: bool, in_ars: bool
) -> Iterator[tuple[str, nn.Module, bool, bool, bool]]:
    """Every module with its dotted name and whether it lies inside the backbone / an SFM module
    / an ARS."""
    in_backbone = in_backbone or "backbone" in prefix.split(".")
    in_sfm = in_sfm or isinstance(module, SFM_MODULE_TYPES)
    in_ars = in_ars or isinstance(module, AdaptiveResampling)
    yield prefix, module, in_backbone, in_sfm, in_ars
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        yield from _walk(child, path, in_backbone, in_sfm, in_ars)


def parameter_groups(cfg: CfgNode, model: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one per distinct (lr, weight decay), in model order.

    LR: ``SOLVER.BASE_LR``; × ``SOLVER.BACKBONE_MULTIPLIER`` inside the ``backbone`` submodule;
    parameters of SFM modules (:data:`SFM_MODULE_TYPES`, wherever they sit) take
    ``BASE_LR × MODEL.SFM.LR_MULTIPLIER`` instead, since the backbone multiplier protects
    pretrained weights and SFM modules have none; ARS parameters × ``MODEL.SFM.ARS_LR_MULTIPLIER``
    on top. Groups of SFM parameters carry ``"clip": MODEL.SFM.GRADIENT_CLIP`` (the others
    ``"model"``) and are kept apart from the others unless that is ``"model"``. Weight decay: ``SOLVER.WEIGHT_DECAY``;
    ``WEIGHT_DECAY_NORM`` for norm layers, ``WEIGHT_DECAY_EMBED`` for ``nn.Embedding``, 0 for
    Swin's relative position bias tables and absolute position embedding. Frozen parameters are
    left out. Each group lists its parameters' names under ``"param_names"`` (torch's key).
    """
    solver = cfg.SOLVER
    base_lr = float(solver.BASE_LR)
    for key, value in (
        ("SOLVER.BASE_LR", base_lr),
        ("SOLVER.BACKBONE_MULTIPLIER", solver.BACKBONE_MULTIPLIER),
        ("MODEL.SFM.LR_MULTIPLIER", cfg.MODEL.SFM.LR_MULTIPLIER),
        ("MODEL.SFM.ARS_LR_MULTIPLIER", cfg.MODEL.SFM.ARS_LR_MULTIPLIER),
    ):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a number >= 0, got {value!r}")
    sfm_clip = _sfm_clip(cfg)
    groups: dict[tuple[float, float, str], dict[str, Any]] = {}
    seen: set[int] = set()
    for prefix, module, in_backbone, in_sfm, in_ars in _walk(model, "", False, False, False):
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if in_sfm:
                lr = base_lr * cfg.MODEL.SFM.LR_MULTIPLIER
                if in_ars:
                    lr *= cfg.MODEL.SFM.ARS_LR_MULTIPLIER
            elif in_backbone:
                lr = base_lr * solver.BACKBONE_MULTIPLIER
            else:
                lr = base_lr
            if name in NO_DECAY_PARAMETER_NAMES:
                decay = 0.0
            elif isinstance(module, NORM_MODULE_TYPES):
                decay = float(solver.WEIGHT_DECAY_NORM)
            elif isinstance(module, nn.Embedding):
                decay = float(solver.WEIGHT_DECAY_EMBED)
            else:
                decay = float(solver.WEIGHT_DECAY)
            clip = sfm_clip if in_sfm else "model"
            group = groups.setdefault(
                (lr, decay, clip),
                {"params": [], "param_names": [], "lr": lr, "weight_decay": decay, "clip": clip},
            )
            group["params"].append(parameter)
            group["param_names"].append(f"{prefix}.{name}" if prefix else name)
    return list(groups.values())


def _sfm_clip(cfg: CfgNode) -> str:
    clip: str = cfg.MODEL.SFM.GRADIENT_CLIP
    if clip not in GRADIENT_CLIPS:
        raise ValueError(
            f"MODEL.SFM.GRADIENT_CLIP must be one of {list(GRADIENT_CLIPS)}, got {clip!r}"
        )
    return clip


def with_full_model_clipping(
    optimizer_type: type[torch.optim.Optimizer],
    max_norm: float | None,
    norm_type: float = 2.0,
    *,
    separate_max_norm: float | None = None,
) -> type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose ``step`` first clips global gradient norms.

    Mask2Former's ``full_model`` clipping: one norm over every parameter of every group whose
    ``"clip"`` entry is ``"model"`` (or absent), to ``max_norm`` (None: those are not clipped),
    unlike detectron2's per-parameter clipping. Groups marked ``"separate"`` share a norm of
    their own, clipped to ``separate_max_norm``; groups marked ``"none"`` are left alone. Under
    AMP, detectron2's trainer calls ``step`` through ``GradScaler.step``, which unscales first,
    so the clipping sees real gradients.
    """
    for name, value in (("max_norm", max_norm), ("separate_max_norm", separate_max_norm)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")

    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        for clip, limit in (("model", max_norm), ("separate", separate_max_norm)):
            if limit is None:
                continue
            parameters = [
                p for g in self.param_groups if g.get("clip", "model") == clip for p in g["params"]
            ]
            if parameters:
                torch.nn.utils.clip_grad_norm_(parameters, limit, norm_type=norm_type)
        return optimizer_type.step(self, closure)

    return type(f"FullModelClipped{optimizer_type.__name__}", (optimizer_type,), {"step": step})


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` (ADAMW or SGD) over :func:`parameter_groups`, with gradient clipping.

    ``SOLVER.CLIP_GRADIENTS`` with ``CLIP_TYPE: "full_model"`` clips the global norm to
    ``CLIP_VALUE`` (:func:`with_full_model_clipping`), SFM parameters as ``MODEL.SFM.GRADIENT_CLIP``
    says; the other clip types are detectron2's per-parameter clipping, for every parameter alike.
    """
    name = str(cfg.SOLVER.OPTIMIZER).upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {list(OPTIMIZERS)}, got {name!r}")
    groups = parameter_groups(cfg, model)
    if not groups:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    optimizer_type: type[torch.optim.Optimizer]
    kwargs: dict[str, Any] = {"lr": cfg.SOLVER.BASE_LR}
    if name == "SGD":
        optimizer_type = torch.optim.SGD
        kwargs.update(momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
    else:
        optimizer_type = torch.optim.AdamW
    clip = cfg.SOLVER.CLIP_GRADIENTS
    sfm_clip = _sfm_clip(cfg)
    separate = float(cfg.MODEL.SFM.CLIP_VALUE) if sfm_clip == "separate" else None
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        if not clip.CLIP_VALUE > 0:
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0 for full_model clipping, "
                f"got {clip.CLIP_VALUE!r}"
            )
        optimizer_type = with_full_model_clipping(
            optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE, separate_max_norm=separate
        )
    elif clip.ENABLED:  # detectron2's per-parameter clipping treats every parameter alike
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    elif separate is not None:
        optimizer_type = with_full_model_clipping(optimizer_type, None, separate_max_norm=separate)
    return optimizer_type(groups, **kwargs)


def warmup_factor(method: str, iteration: int, warmup_iters: int, factor: float) -> float:
    """The LR factor at ``iteration`` during warmup (1 from ``warmup_iters`` on).

    ``constant``: ``factor`` throughout; ``linear``: from ``factor`` at 0 up to 1.
    """
    if method not in WARMUP_METHODS:
        raise ValueError(f"warmup method must be one of {list(WARMUP_METHODS)}, got {method!r}")
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return factor
    alpha = iteration / warmup_iters
    return factor * (1 - alpha) + alpha


class WarmupPolyLR(torch.optim.lr_scheduler._LRScheduler):
    """DeepLab's poly schedule: ``base_lr × warmup × (1 - t / max_iters) ** power``.

    After warmup the factor never falls below ``constant_ending`` (0 = plain poly). Subclasses
    ``_LRScheduler`` because detectron2's LRScheduler hook checkpoints only those.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        *,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        power: float = 0.9,
        constant_ending: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")
        if isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) or warmup_iters < 0:
            raise ValueError(f"warmup_iters must be an int >= 0, got {warmup_iters!r}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(
                f"warmup_method must be one of {list(WARMUP_METHODS)}, got {warmup_method!r}"
            )
        if not 0 <= warmup_factor <= 1:
            raise ValueError(f"warmup_factor must be in [0, 1], got {warmup_factor!r}")
        if not power >= 0:
            raise ValueError(f"power must be >= 0, got {power!r}")
        if not 0 <= constant_ending <= 1:
            raise ValueError(f"constant_ending must be in [0, 1], got {constant_ending!r}")
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.power = power
        self.constant_ending = constant_ending
        super().__init__(optimizer, last_epoch)

    def factor(self, iteration: int) -> float:
        """The multiplier of every group's base LR at ``iteration``."""
        warmup = warmup_factor(self.warmup_method, iteration, self.warmup_iters, self.warmup_factor)
        poly = math.pow(max(0.0, 1.0 - iteration / self.max_iters), self.power)
        if warmup == 1.0:
            poly = max(poly, self.constant_ending)
        return warmup * poly

    def get_lr(self) -> list[float | torch.Tensor]:
        factor = self.factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        return self.get_lr()


def build_lr_scheduler(
    cfg: CfgNode, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """:class:`WarmupPolyLR` for ``SOLVER.LR_SCHEDULER_NAME: "WarmupPolyLR"``, else detectron2's."""
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return detectron2_lr_scheduler(cfg, optimizer)  # type: ignore[no-any-return]
    return WarmupPolyLR(
        optimizer,
        solver.MAX_ITER,
        warmup_factor=solver.WARMUP_FACTOR,
        warmup_iters=solver.WARMUP_ITERS,
        warmup_method=solver.WARMUP_METHOD,
        power=solver.POLY_LR_POWER,
        constant_ending=solver.POLY_LR_CONSTANT_ENDING,
    )
