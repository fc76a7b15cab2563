"""``build_sfm_swin_backbone``: Swin-T/S/B for detectron2 with ARS before each patch merging.

The features are Mask2Former's: each stage's output before its patch merging, through an extra
LayerNorm ``norm{i}``, as NCHW ``res2..res5`` (strides 4..32). ARS runs on the stage output after
that tap, so the features of a level are unchanged by the ARS that follows it; only the path into
the next stage is resampled. With ``MODEL.SFM.ARS_STAGES: []`` the module is the plain backbone
(same parameters, same outputs). Official ImageNet checkpoints load after
``tools/convert_pretrained.py`` (:mod:`sfm_d2.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from sfm_core.nn import LowPass
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
from sfm_d2.modeling.backbone.swin_layers import PatchEmbed, SwinStage, init_swin_weights


class SFMSwinTransformer(Backbone):  # type: ignore[misc]
    """Swin Transformer returning ``res2..res5``, their composite positions and the ARS logits.

    Args:
        embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop_rate,
            attn_drop_rate, drop_path_rate, ape, patch_norm, patch_size, pretrain_img_size,
            use_checkpoint: the ``MODEL.SWIN`` settings of Mask2Former's D2 Swin.
        out_features: levels to return; stages past the deepest one are not built.
        ars_stages: stages (``"res3"``...) whose input passes through ARS.
        make_ars: ``(stage, channels) -> ARS module`` (required when ``ars_stages`` is not empty).
        lowpass_stages: stages whose input is blurred by a fixed binomial low-pass
            (:class:`sfm_core.nn.LowPass`, after any ARS) before the patch merging: the
            BlurPool-style alternative to ARS. No parameters.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        patch_size: int = 4,
        pretrain_img_size: int = 224,
        use_checkpoint: bool = False,
        out_features: Sequence[str] = LEVELS,
        ars_stages: Sequence[str] = (),
        make_ars: ArsFactory | None = None,
        lowpass_stages: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self._out_features = check_out_features("out_features", out_features)
        depths = check_stage_lists("depths", depths)
        num_heads = check_stage_lists("num_heads", num_heads)
        if ars_stages and make_ars is None:
            raise ValueError("make_ars is required when ars_stages is not empty")
        num_stages = 1 + max(LEVELS.index(f) for f in self._out_features)
        dims = [embed_dim * 2**i for i in range(len(LEVELS))]
        self._out_feature_channels = {f: dims[LEVELS.index(f)] for f in self._out_features}
        self._out_feature_strides = {
            f: patch_size * 2 ** LEVELS.index(f) for f in self._out_features
        }

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        self.absolute_pos_embed: nn.Parameter | None = None
        if ape:
            side = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, side, side))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            SwinStage(
                dims[i],
                depths[i],
                num_heads[i],
                window=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i + 1 < num_stages,
                use_checkpoint=use_checkpoint,
            )
            for i in range(num_stages)
        )
        self.apply(init_swin_weights)
        for f in self._out_features:
            i = LEVELS.index(f)
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        # Only the stages that are built can be preceded by ARS.
        built = [s for s in LEVELS[1:num_stages] if s in ars_stages]
        self.ars = nn.ModuleDict({s: make_ars(s, dims[LEVELS.index(s) - 1]) for s in built})  # type: ignore[misc]
        blurred = [s for s in LEVELS[1:num_stages] if s in lowpass_stages]
        self.lowpass = nn.ModuleDict({s: LowPass() for s in blurred})

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` ``[B, C, H, W]`` → features, ``positions_key`` and ``ars_logits_key`` entries."""
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D tensor [B, C, H, W], got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # [B, H/4, W/4, C]
        if self.absolute_pos_embed is not None:
            embed = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
            x = x + embed.permute(0, 2, 3, 1)
        x = self.pos_drop(x)
        positions = first_positions(x.permute(0, 3, 1, 2))
        outputs: dict[str, torch.Tensor] = {}
        stage: SwinStage
        for i, stage in enumerate(self.layers):  # type: ignore[assignment]
            x = stage(x)
            level = LEVELS[i]
            if level in self._out_features:
                norm = getattr(self, f"norm{i}")
                outputs[level] = norm(x).permute(0, 3, 1, 2).contiguous()
                outputs[positions_key(level)] = positions
            if stage.downsample is None:
                break
            following = LEVELS[i + 1]
            if following in self.ars:
                resampled, positions, logits = resample_level(
                    self.ars[following], x.permute(0, 3, 1, 2), positions
                )
                x = resampled.permute(0, 2, 3, 1)
                outputs[ars_logits_key(following)] = logits
            if following in self.lowpass:
                x = self.lowpass[following](x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = stage.downsample(x)
            positions = downsampled_positions(positions, x.permute(0, 3, 1, 2))
        return outputs


@BACKBONE_REGISTRY.register()  # type: ignore[untyped-decorator]
def build_sfm_swin_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> SFMSwinTransformer:
    """Swin from ``MODEL.SWIN`` (Mask2Former's keys) with ARS from ``MODEL.SFM``."""
    validate_sfm_config(cfg)
    swin = cfg.MODEL.SWIN
    return SFMSwinTransformer(
        in_chans=input_shape.channels,
        embed_dim=swin.EMBED_DIM,
        depths=check_stage_lists("MODEL.SWIN.DEPTHS", swin.DEPTHS),
        num_heads=check_stage_lists("MODEL.SWIN.NUM_HEADS", swin.NUM_HEADS),
        window_size=swin.WINDOW_SIZE,
        mlp_ratio=swin.MLP_RATIO,
        qkv_bias=swin.QKV_BIAS,
        qk_scale=swin.QK_SCALE,
        drop_rate=swin.DROP_RATE,
        attn_drop_rate=swin.ATTN_DROP_RATE,
        drop_path_rate=swin.DROP_PATH_RATE,
        ape=swin.APE,
        patch_norm=swin.PATCH_NORM,
        patch_size=swin.PATCH_SIZE,
        pretrain_img_size=swin.PRETRAIN_IMG_SIZE,
        use_checkpoint=swin.USE_CHECKPOINT,
        out_features=check_out_features("MODEL.SWIN.OUT_FEATURES", swin.OUT_FEATURES),
        ars_stages=cfg.MODEL.SFM.ARS_STAGES,
        make_ars=partial(build_ars, cfg),
        lowpass_stages=cfg.MODEL.SFM.LOWPASS_STAGES,
    )
