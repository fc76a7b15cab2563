"""SFM modules: ARS (modulation), MSAU and LPRM (demodulation), the optional edge-guidance loss.

They call :mod:`sfm_core.ops`, so a plug-in backend (sfm-triton) runs them on GPUs.
"""

from sfm_core.nn.ars import AdaptiveResampling, Resampled
from sfm_core.nn.diagnostics import ArsDiagnostics, ars_diagnostics, label_detail
from sfm_core.nn.edge_loss import edge_guidance_loss
from sfm_core.nn.generators import (
    GENERATORS,
    ConvAttention,
    LearnableHighPass,
    PyramidAttention,
    PyramidContext,
    build_attention_generator,
)
from sfm_core.nn.lowpass import LowPass
from sfm_core.nn.lprm import LocalPixelRelation
from sfm_core.nn.msau import MultiScaleAdaptiveUpsampling
from sfm_core.nn.norms import group_norm
from sfm_core.nn.random_stream import own_random_stream, stream_seed

__all__ = [
    "GENERATORS",
    "AdaptiveResampling",
    "ArsDiagnostics",
    "ConvAttention",
    "LearnableHighPass",
    "LocalPixelRelation",
    "LowPass",
    "MultiScaleAdaptiveUpsampling",
    "PyramidAttention",
    "PyramidContext",
    "Resampled",
    "ars_diagnostics",
    "build_attention_generator",
    "edge_guidance_loss",
    "group_norm",
    "label_detail",
    "own_random_stream",
    "stream_seed",
]
