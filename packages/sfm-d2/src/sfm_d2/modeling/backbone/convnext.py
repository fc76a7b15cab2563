"""``build_sfm_convnext_backbone``: ConvNeXt-T/S/B for detectron2 with ARS before each downsampling.

The stem, stages and blocks are timm's ConvNeXt (it takes any input size; detectron2 pads to 32).
The features are those of the official ConvNeXt segmentation backbone: each stage's output through
a channels-first LayerNorm ``norm{i}``, as ``res2..res5`` (strides 4..32). ARS runs on the stage
output after that tap and before the next stage's downsampling layer (timm keeps that layer at the
start of the next stage, ``stages.{i}.downsample``). With ``MODEL.SFM.ARS_STAGES: []`` the module
is the plain backbone. Official (facebookresearch) and timm ImageNet checkpoints load after
``tools/convert_pretrained.py`` (:mod:`sfm_d2.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import LayerNorm2d  # type: ignore[attr-defined]
from timm.models.convnext import ConvNeXt
from torch import nn

from sfm_d2.config import validate_sfm_config
from sfm_d2.modeling.backbone.ars import build_ars
from sfm_d2.modeling.backbone.levels import (
    LEVELS,
    ArsFactory,
    check_out_features,
    check_stage_lists,
    downsampled_positions,
    first_positions,
    resample_level,
)
from sfm_d2.modeling.backbone.outputs import ars_logits_key, positions_key

STEM_STRIDE = 4


class SFMConvNeXt(Backbone):  # type: ignore[misc]
    """ConvNeXt returning ``res2..res5``, their composite positions and the ARS logits.

    Args:
        depths, dims, drop_path_rate, layer_scale_init_value: the ``MODEL.CONVNEXT`` settings
            (``layer_scale_init_value <= 0`` turns layer scale off, as in the official code).
        out_features: levels to return; stages past the deepest one are not built.
        ars_stages: stages (``"res3"``...) whose input passes through ARS.
        make_ars: ``(stage, channels) -> ARS module`` (required when ``ars_stages`` is not empty).
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.4,
        layer_scale_init_value: float = 1e-6,
        out_features: Sequence[str] = LEVELS,
        ars_stages: Sequence[str] = (),
        make_ars: ArsFactory | None = None,
    ) -> None:
        super().__init__()
        self._out_features = check_out_features("out_features", out_features)
        depths = check_stage_lists("depths", depths)
        dims = check_stage_lists("dims", dims)
        if ars_stages and make_ars is None:
            raise ValueError("make_ars is required when ars_stages is not empty")
        num_stages = 1 + max(LEVELS.index(f) for f in self._out_features)
        self._out_feature_channels = {f: dims[LEVELS.index(f)] for f in self._out_features}
        self._out_feature_strides = {
            f: STEM_STRIDE * 2 ** LEVELS.index(f) for f in self._out_features
        }

        body = ConvNeXt(
            in_chans=in_chans,
            num_classes=0,
            depths=tuple(depths),
            dims=tuple(dims),
            drop_path_rate=drop_path_rate,
            ls_init_value=layer_scale_init_value if layer_scale_init_value > 0 else None,
        )
        # Keep the feature path only: timm's classifier norm would be an unused parameter.
        self.stem = body.stem
        self.stages = body.stages[:num_stages]
        for f in self._out_features:
            i = LEVELS.index(f)
            self.add_module(f"norm{i}", LayerNorm2d(dims[i], eps=1e-6))
        built = [s for s in LEVELS[1:num_stages] if s in ars_stages]
        self.ars = nn.ModuleDict({s: make_ars(s, dims[LEVELS.index(s) - 1]) for s in built})  # type: ignore[misc]

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` ``[B, C, H, W]`` → features, ``positions_key`` and ``ars_logits_key`` entries."""
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D tensor [B, C, H, W], got shape {tuple(x.shape)}")
        x = self.stem(x)
        positions = first_positions(x)
        outputs: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.stages.children()):
            level = LEVELS[i]
            if i > 0:
                if level in self.ars:
                    x, positions, logits = resample_level(self.ars[level], x, positions)
                    outputs[ars_logits_key(level)] = logits
                x = stage.get_submodule("downsample")(x)
                positions = downsampled_positions(positions, x)
            x = stage.get_submodule("blocks")(x)
            if level in self._out_features:
                outputs[level] = getattr(self, f"norm{i}")(x)
                outputs[positions_key(level)] = positions
        return outputs


@BACKBONE_REGISTRY.register()  # type: ignore[untyped-decorator]
def build_sfm_convnext_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> SFMConvNeXt:
    """ConvNeXt from ``MODEL.CONVNEXT`` with ARS from ``MODEL.SFM``."""
    validate_sfm_config(cfg)
    convnext = cfg.MODEL.CONVNEXT
    return SFMConvNeXt(
        in_chans=input_shape.channels,
        depths=check_stage_lists("MODEL.CONVNEXT.DEPTHS", convnext.DEPTHS),
        dims=check_stage_lists("MODEL.CONVNEXT.DIMS", convnext.DIMS),
        drop_path_rate=convnext.DROP_PATH_RATE,
        layer_scale_init_value=convnext.LAYER_SCALE_INIT_VALUE,
        out_features=check_out_features("MODEL.CONVNEXT.OUT_FEATURES", convnext.OUT_FEATURES),
        ars_stages=cfg.MODEL.SFM.ARS_STAGES,
        make_ars=partial(build_ars, cfg),
    )
