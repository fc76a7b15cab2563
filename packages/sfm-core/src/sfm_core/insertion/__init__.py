"""Plug-and-play ARS: insert it before the stage transitions of any model, as a drop-in wrapper.

``insert_ars(model, "auto", example_input=x)`` finds the three stride-2 stage transitions after
the stem of timm and torchvision ResNet/ResNeXt, ConvNeXt and Swin models (METHOD.md §4), or
the sites you name or choose with a predicate, and returns an :class:`SFMModel` that returns
what ``model`` returns and whose ``state_dict`` keys are ``model``'s plus ``sfm_ars.*``.
``wrapped.sfm_trace()`` gives the grids, logits and composite positions (METHOD.md §2) of the
last call, per site and per output level.
"""

import sfm_core.flop_formulas  # noqa: F401  (FlopCounterMode counts grid_sample in wrapped models)
from sfm_core.insertion.sites import LAYOUTS, PRESETS, Predicate, auto_sites, is_downsampling
from sfm_core.insertion.trace import SiteTrace, Trace
from sfm_core.insertion.wrapper import ARS_PREFIX, SFMModel, insert_ars, site_key

__all__ = [
    "ARS_PREFIX",
    "LAYOUTS",
    "PRESETS",
    "Predicate",
    "SFMModel",
    "SiteTrace",
    "Trace",
    "auto_sites",
    "insert_ars",
    "is_downsampling",
    "site_key",
]
