"""ARS modules for the detectron2 backbones, configured by ``MODEL.SFM.*`` (shared by all three)."""

from __future__ import annotations

from functools import partial

from detectron2.config import CfgNode
from detectron2.layers import get_norm
from torch import nn

from sfm_core.nn import AdaptiveResampling
from sfm_d2.config import ops_backend


def build_ars(cfg: CfgNode, channels: int) -> nn.Module:
    """One ARS module for a ``channels``-wide stage input, configured by ``MODEL.SFM.*``."""
    sfm = cfg.MODEL.SFM
    return AdaptiveResampling(
        channels,
        generator=sfm.GENERATOR,
        window=sfm.WINDOW,
        fwhm=sfm.FWHM,
        s_min=sfm.S_MIN,
        norm_layer=partial(get_norm, sfm.NORM),
        backend=ops_backend(cfg),
    )
