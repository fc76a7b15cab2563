"""SFM ResNet: detectron2's own ResNet with ARS on the input of res3, res4 and res5 (METHOD.md §4).

Built from detectron2's ``BasicStem``, ``BasicBlock``/``BottleneckBlock``/``DeformBottleneckBlock``
and ``ResNet.make_stage`` exactly as ``build_resnet_backbone`` builds them, so parameter names
(and R-50.pkl) stay those of the plain ResNet; ARS parameters live under ``ars.<stage>.*``.
With ``MODEL.SFM.ARS_STAGES = []`` the model *is* the plain backbone: same parameters, same
features. Adds DeepLab's dilated res4/res5 (D16: RES5_DILATION 2; D8: RES4_DILATION 2 and
RES5_DILATION 4) and RES5_MULTI_GRID; ARS still runs before a dilated stage, as the authors did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
)
from torch import nn

from sfm_d2.config import validate_sfm_config
from sfm_d2.modeling.backbone.ars import build_ars
from sfm_d2.modeling.backbone.levels import downsampled_positions, first_positions, resample_level
from sfm_d2.modeling.backbone.outputs import ars_logits_key, positions_key

BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class SFMResNet(ResNet):  # type: ignore[misc]
    """detectron2 ``ResNet`` whose stages listed in ``ars`` first resample their input with ARS.

    ``forward`` returns the requested features plus, for each, its composite positions under
    ``positions_key(name)``, and each ARS's attention logits under ``ars_logits_key(stage)``.
    ``freeze_at`` freezes the pretrained stem/stages only; ARS modules stay trainable.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[Sequence[nn.Module]],
        *,
        out_features: Sequence[str],
        freeze_at: int = 0,
        ars: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(stem, stages, out_features=list(out_features), freeze_at=freeze_at)
        ars = dict(ars or {})
        unknown = sorted(set(ars) - set(self.stage_names[1:]))
        if unknown:
            raise ValueError(
                f"ars has modules for {unknown}, which are not built stages after res2 "
                f"(built: {list(self.stage_names)})"
            )
        self.ars = nn.ModuleDict(ars)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be an image batch [N, C, H, W], got {shape}")
        outputs: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        # None while the lattice is uniform (exact identity positions are made on demand).
        positions: torch.Tensor | None = None
        self._record(outputs, "stem", x, positions)
        for name, stage in zip(self.stage_names, self.stages, strict=True):
            if name in self.ars:
                start = first_positions(x) if positions is None else positions
                x, positions, outputs[ars_logits_key(name)] = resample_level(
                    self.ars[name], x, start
                )
            x = stage(x)
            if positions is not None:
                positions = downsampled_positions(positions, x)
            self._record(outputs, name, x, positions)
        return outputs

    def _record(
        self,
        outputs: dict[str, torch.Tensor],
        name: str,
        x: torch.Tensor,
        positions: torch.Tensor | None,
    ) -> None:
        if name in self._out_features:
            outputs[name] = x
            outputs[positions_key(name)] = first_positions(x) if positions is None else positions


def _resnet_error(key: str, expected: str, value: object) -> ValueError:
    return ValueError(f"MODEL.RESNETS.{key} must be {expected}, got {value!r}")


def _check_resnet_config(cfg: CfgNode) -> None:
    """detectron2's and DeepLab's ResNet asserts, as errors that name the key."""
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in BLOCKS_PER_STAGE:
        raise _resnet_error("DEPTH", f"one of {sorted(BLOCKS_PER_STAGE)}", r.DEPTH)
    if r.STEM_TYPE != "basic":
        raise _resnet_error(
            "STEM_TYPE", "'basic' (detectron2's BasicStem, as in R-50.pkl)", r.STEM_TYPE
        )
    if r.RES4_DILATION not in (1, 2):
        raise _resnet_error("RES4_DILATION", "1 or 2", r.RES4_DILATION)
    if r.RES5_DILATION not in (1, 2, 4):
        raise _resnet_error("RES5_DILATION", "1, 2 or 4", r.RES5_DILATION)
    if r.RES4_DILATION == 2 and r.RES5_DILATION != 4:
        raise _resnet_error("RES5_DILATION", "4 when RES4_DILATION is 2 (D8)", r.RES5_DILATION)
    if r.DEPTH < 50:
        for key, plain in (
            ("RES2_OUT_CHANNELS", 64),
            ("NUM_GROUPS", 1),
            ("RES4_DILATION", 1),
            ("RES5_DILATION", 1),
        ):
            if r[key] != plain:
                raise _resnet_error(key, f"{plain} for R{r.DEPTH} (BasicBlock)", r[key])
        if any(r.DEFORM_ON_PER_STAGE):
            raise _resnet_error(
                "DEFORM_ON_PER_STAGE", "all False for R18/R34", r.DEFORM_ON_PER_STAGE
            )
    grid = list(r.RES5_MULTI_GRID)
    if any(g != 1 for g in grid) and len(grid) != BLOCKS_PER_STAGE[r.DEPTH][3]:
        raise _resnet_error(
            "RES5_MULTI_GRID",
            f"all ones, or one factor per res5 block ({BLOCKS_PER_STAGE[r.DEPTH][3]})",
            grid,
        )


def build_sfm_resnet_stages(cfg: CfgNode, input_shape: ShapeSpec) -> tuple[nn.Module, list[Any]]:
    """The stem and stages of detectron2's ``build_resnet_backbone`` (+ DeepLab dilations)."""
    r = cfg.MODEL.RESNETS
    norm = r.NORM
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=norm)
    blocks_per_stage = BLOCKS_PER_STAGE[r.DEPTH]
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, stage_idx in enumerate(range(2, 6)):
        dilation = {4: r.RES4_DILATION, 5: r.RES5_DILATION}.get(stage_idx, 1)
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        n = blocks_per_stage[idx]
        kwargs: dict[str, Any] = {
            "num_blocks": n,
            "stride_per_block": [first_stride] + [1] * (n - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        if r.DEPTH < 50:
            kwargs["block_class"] = BasicBlock
        else:
            kwargs["bottleneck_channels"] = bottleneck_channels
            kwargs["stride_in_1x1"] = r.STRIDE_IN_1X1
            kwargs["num_groups"] = r.NUM_GROUPS
            if stage_idx == 5 and any(g != 1 for g in r.RES5_MULTI_GRID):
                kwargs["dilation_per_block"] = [dilation * g for g in r.RES5_MULTI_GRID]
            else:
                kwargs["dilation"] = dilation
            if r.DEFORM_ON_PER_STAGE[idx]:
                kwargs["block_class"] = DeformBottleneckBlock
                kwargs["deform_modulated"] = r.DEFORM_MODULATED
                kwargs["deform_num_groups"] = r.DEFORM_NUM_GROUPS
            else:
                kwargs["block_class"] = BottleneckBlock
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return stem, stages


@BACKBONE_REGISTRY.register()  # type: ignore[untyped-decorator]
def build_sfm_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> SFMResNet:
    """``MODEL.BACKBONE.NAME: build_sfm_resnet_backbone``: reads MODEL.RESNETS.* and MODEL.SFM.*."""
    validate_sfm_config(cfg)
    _check_resnet_config(cfg)
    stem, stages = build_sfm_resnet_stages(cfg, input_shape)
    out_features = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    built = max({"res2": 1, "res3": 2, "res4": 3, "res5": 4}.get(f, 0) for f in out_features)
    ars = {}
    for idx, blocks in enumerate(stages[:built]):
        name = f"res{idx + 2}"
        if name in cfg.MODEL.SFM.ARS_STAGES:
            ars[name] = build_ars(cfg, name, blocks[0].in_channels)
    return SFMResNet(
        stem, stages, out_features=out_features, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, ars=ars
    )
