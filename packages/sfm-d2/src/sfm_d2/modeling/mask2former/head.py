"""detectron2 glue of the Mask2Former head: "SFMMaskFormerHead" and "SFMMSDeformAttnPixelDecoder".

Both live in detectron2's ``SEM_SEG_HEADS_REGISTRY`` (the official project registers its pixel
decoders there too) and read the official keys; the SFM switches come from
``MODEL.SFM.MASK2FORMER.*``, the LPRM settings from ``MODEL.SFM.MSAU.{DILATIONS,GATED}``, the non-uniform upsampling method
from ``MODEL.SFM.MSAU.UPSAMPLE_METHOD`` and
``MODEL.SFM.NORM``, the op backend from ``MODEL.SFM.BACKEND``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from sfm_d2.config import ops_backend
from sfm_d2.modeling.backbone.outputs import positions_key
from sfm_d2.modeling.mask2former.pixel_decoder import MSDeformAttnPixelDecoder
from sfm_d2.modeling.mask2former.registry import build_transformer_decoder

# The only decoder input the official semantic configs use (the MaskFormer-v1 ones are not built).
MULTI_SCALE_FEATURE = "multi_scale_pixel_decoder"


def _head_features(cfg: CfgNode, input_shape: Mapping[str, ShapeSpec]) -> dict[str, ShapeSpec]:
    """``input_shape`` restricted to MODEL.SEM_SEG_HEAD.IN_FEATURES (errors name a missing one)."""
    names = list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
    missing = [n for n in names if n not in input_shape]
    if missing:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not "
            f"return (it returns {sorted(input_shape)})"
        )
    return {n: input_shape[n] for n in names}


@SEM_SEG_HEADS_REGISTRY.register()
class SFMMSDeformAttnPixelDecoder(MSDeformAttnPixelDecoder):
    """:class:`MSDeformAttnPixelDecoder` configured from ``cfg`` (or keyword arguments)."""

    @configurable  # type: ignore[untyped-decorator]
    def __init__(self, input_shape: Mapping[str, tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(input_shape, **kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Mapping[str, ShapeSpec]) -> dict[str, Any]:
        """Official mapping: encoder heads from MASK_FORMER.NHEADS, dropout from
        MASK_FORMER.DROPOUT, FFN 1024 and 4 points hard-wired (the N_HEADS/N_POINTS keys are
        unused there too); FPN norm from SEM_SEG_HEAD.NORM ("" = none, conv bias)."""
        head = cfg.MODEL.SEM_SEG_HEAD
        sfm = cfg.MODEL.SFM
        return {
            "input_shape": {
                k: (v.channels, v.stride) for k, v in _head_features(cfg, input_shape).items()
            },
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm_layer": partial(get_norm, head.NORM),
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "common_stride": head.COMMON_STRIDE,
            "warped_positional_encoding": sfm.MASK2FORMER.WARPED_POSITIONAL_ENCODING,
            "nonuniform_upsample": sfm.MASK2FORMER.NONUNIFORM_UPSAMPLE,
            "upsample_method": sfm.MSAU.UPSAMPLE_METHOD,
            "lprm": sfm.MASK2FORMER.LPRM,
            "lprm_dilations": list(sfm.MSAU.DILATIONS),
            "lprm_gated": sfm.MSAU.GATED,
            "lprm_norm_layer": partial(get_norm, sfm.NORM),
            "backend": ops_backend(cfg),
        }


def build_pixel_decoder(cfg: CfgNode, input_shape: Mapping[str, ShapeSpec]) -> nn.Module:
    """The pixel decoder named by ``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    if name not in SEM_SEG_HEADS_REGISTRY:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME {name!r} is not registered in "
            "SEM_SEG_HEADS_REGISTRY (sfm_d2 registers 'SFMMSDeformAttnPixelDecoder')"
        )
    decoder: nn.Module = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(decoder, "forward_features", None)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME {name!r} builds a module without "
            "forward_features(features); it is not a pixel decoder"
        )
    return decoder


@SEM_SEG_HEADS_REGISTRY.register()
class SFMMaskFormerHead(nn.Module):
    """Pixel decoder, then the masked-attention decoder on its three levels and mask features.

    Each level's composite positions (the backbone's ``<level>_positions``, absent for a plain
    backbone) go to the decoder, which uses them only when its SFM switches are on.
    """

    @configurable  # type: ignore[untyped-decorator]
    def __init__(
        self,
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        predictor: nn.Module,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Mapping[str, ShapeSpec]) -> dict[str, Any]:
        feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if feature != MULTI_SCALE_FEATURE:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be {MULTI_SCALE_FEATURE!r} "
                f"(Mask2Former's multi-scale decoder), got {feature!r}"
            )
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, _head_features(cfg, input_shape)),
            "predictor": build_transformer_decoder(cfg, head.CONVS_DIM),
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
        }

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        mask_features, _, multi_scale = self.pixel_decoder.forward_features(features)
        names = getattr(self.pixel_decoder, "multi_scale_feature_names", None)
        positions = None if names is None else [features.get(positions_key(n)) for n in names]
        predictions: dict[str, Any] = self.predictor(multi_scale, mask_features, positions)
        return predictions
