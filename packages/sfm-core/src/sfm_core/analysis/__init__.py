"""Aliasing analysis (SPEC section 5): aliasing ratio, radial power spectrum, model report.

Plots live in :mod:`sfm_core.analysis.plots` (needs the ``plot`` extra, matplotlib).
"""

from sfm_core.analysis.aliasing import aliasing_ratio
from sfm_core.analysis.report import AliasingReport, LayerAliasing, aliasing_report
from sfm_core.analysis.spectrum import radial_power_spectrum

__all__ = [
    "AliasingReport",
    "LayerAliasing",
    "aliasing_ratio",
    "aliasing_report",
    "radial_power_spectrum",
]
