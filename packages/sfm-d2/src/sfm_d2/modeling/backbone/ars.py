"""ARS modules for the detectron2 backbones, configured by ``MODEL.SFM.*`` (shared by all three)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from detectron2.config import CfgNode
from detectron2.layers import get_norm
from torch import nn

from sfm_core.nn import AdaptiveResampling, group_norm, own_random_stream
from sfm_d2.config import ops_backend


def pyramid_norm(name: str) -> Callable[[int], nn.Module]:
    """The ``norm_layer`` of ARS's pyramid branches for ``MODEL.SFM.NORM``.

    ``"GN"`` becomes :func:`sfm_core.nn.group_norm` (up to 32 groups, as many as divide the
    width): the branches are C/4 wide, 24 on Swin-T's first stage and 16 on ResNet's res2 path,
    where detectron2's ``GroupNorm(32, C)`` cannot be built. Other names go to ``get_norm``.
    """
    return group_norm(32) if name == "GN" else partial(get_norm, name)


def build_ars(cfg: CfgNode, stage: str, channels: int) -> nn.Module:
    """The ARS before ``stage`` for a ``channels``-wide input, configured by ``MODEL.SFM.*``.

    Built on a random stream of its own (:func:`sfm_core.nn.own_random_stream`, named after the
    stage): the backbone's other parameters, and every later draw, are those of the backbone
    without ARS built with the same seed.
    """
    sfm = cfg.MODEL.SFM
    with own_random_stream(f"backbone.ars.{stage}"):
        return AdaptiveResampling(
            channels,
            generator=sfm.GENERATOR,
            window=sfm.WINDOW,
            fwhm=sfm.FWHM,
            s_min=sfm.S_MIN,
            norm_layer=pyramid_norm(sfm.NORM),
            backend=ops_backend(cfg),
            project_init_std=sfm.ARS_PROJECT_INIT_STD,
            detach_generator_input=sfm.ARS_DETACH_GENERATOR_INPUT,
        )
