"""Aliasing analysis (METHOD.md §5): aliasing ratio, radial power spectrum, model report, and
the grid controls that separate ARS's modulation from interpolation blur.

Plots live in :mod:`sfm_core.analysis.plots` (needs the ``plot`` extra, matplotlib).
"""

from sfm_core.analysis.aliasing import aliasing_ratio
from sfm_core.analysis.comparison import ControlledAliasing, aliasing_with_controls
from sfm_core.analysis.controls import CONTROLS, control_grid, grid_control
from sfm_core.analysis.report import AliasingReport, LayerAliasing, aliasing_report
from sfm_core.analysis.spectrum import radial_power_spectrum

__all__ = [
    "CONTROLS",
    "AliasingReport",
    "ControlledAliasing",
    "LayerAliasing",
    "aliasing_ratio",
    "aliasing_report",
    "aliasing_with_controls",
    "control_grid",
    "grid_control",
    "radial_power_spectrum",
]
