"""The transformer-decoder registry and its one entry, configured from ``MODEL.MASK_FORMER.*``.

Mask2Former keeps its own registry for the decoder (not a detectron2 one); ours has an ``SFM``
prefix in every name, so it never clashes with an installed official Mask2Former.
"""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode, configurable
from detectron2.utils.registry import Registry
from torch import nn

from sfm_d2.modeling.mask2former.transformer_decoder import MultiScaleMaskedTransformerDecoder

SFM_TRANSFORMER_DECODER_REGISTRY = Registry("SFM_TRANSFORMER_DECODER")
SFM_TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Masked-attention transformer decoders of SFMMaskFormerHead, looked up by
``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``; called as ``obj(cfg, in_channels)``.
"""


@SFM_TRANSFORMER_DECODER_REGISTRY.register()
class SFMMultiScaleMaskedTransformerDecoder(MultiScaleMaskedTransformerDecoder):
    """The masked-attention decoder, built from a config (or from keyword arguments)."""

    @configurable  # type: ignore[untyped-decorator]
    def __init__(self, in_channels: int, **kwargs: Any) -> None:
        super().__init__(in_channels, **kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode, in_channels: int) -> dict[str, Any]:
        """Official settings: DEC_LAYERS counts the initial prediction; no dropout in the
        decoder (Mask2Former hard-wires 0 there; MASK_FORMER.DROPOUT is the encoder's)."""
        mf = cfg.MODEL.MASK_FORMER
        if isinstance(mf.DEC_LAYERS, bool) or not isinstance(mf.DEC_LAYERS, int):
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be an int, got {mf.DEC_LAYERS!r}")
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        switches = cfg.MODEL.SFM.MASK2FORMER
        return {
            "in_channels": in_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "warped_positional_encoding": switches.WARPED_POSITIONAL_ENCODING,
            "warped_mask_attention": switches.WARPED_MASK_ATTENTION,
        }


def build_transformer_decoder(cfg: CfgNode, in_channels: int) -> nn.Module:
    """The decoder named by ``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    if name not in SFM_TRANSFORMER_DECODER_REGISTRY:
        raise ValueError(
            f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME must be one of "
            f"{sorted(name for name, _ in SFM_TRANSFORMER_DECODER_REGISTRY)}, got {name!r}"
        )
    decoder: nn.Module = SFM_TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels)
    return decoder
