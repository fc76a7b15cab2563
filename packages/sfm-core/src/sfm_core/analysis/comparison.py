"""The aliasing report under every grid control: own grid beside the controls that could refute it.

One :func:`~sfm_core.analysis.aliasing_report` pass over the data per control
(:mod:`sfm_core.analysis.controls`); the table has one row per downsampling layer and one column
per control, and :meth:`ControlledAliasing.modulation` gives own minus each control.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from sfm_core.analysis.controls import CONTROLS, check_control
from sfm_core.analysis.report import AliasingReport, aliasing_report


@dataclass(frozen=True)
class ControlledAliasing:
    """``reports[control]``: the aliasing report with every ARS resampling at that control's grid."""

    reports: dict[str, AliasingReport]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in next(iter(self.reports.values())).layers)

    def mean(self, control: str, layer: str) -> float:
        """Mean aliasing ratio entering ``layer`` under ``control`` (NaN if it never ran)."""
        found = [entry for entry in self.reports[control].layers if entry.name == layer]
        if not found:
            raise ValueError(f"layer must be one of {list(self.layers)}, got {layer!r}")
        return found[0].mean if found[0].count else math.nan

    def modulation(self, control: str, layer: str) -> float:
        """Own minus ``control`` at ``layer``: negative when the own grid folds less than it."""
        return self.mean("own", layer) - self.mean(control, layer)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{layer: {control: mean AR}}``, JSON-ready."""
        return {
            layer: {control: self.mean(control, layer) for control in self.reports}
            for layer in self.layers
        }

    def table(self) -> str:
        """Markdown: layer, stride, then the mean aliasing ratio under each control."""
        first = next(iter(self.reports.values()))
        controls = list(self.reports)
        lines = [
            "| layer | stride | " + " | ".join(f"AR {c}" for c in controls) + " |",
            "|---|---|" + "---:|" * len(controls),
        ]
        for entry in first.layers:
            cells = [f"{self.mean(c, entry.name):.4f}" for c in controls]
            stride = "x".join(map(str, entry.stride))
            lines.append(f"| {entry.name} | {stride} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def aliasing_with_controls(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    controls: Sequence[str] = CONTROLS,
    shift: float = 0.5,
    **options: Any,
) -> ControlledAliasing:
    """:func:`aliasing_report` of ``model`` over ``batches`` once per grid control.

    ``batches`` is iterated once per control (pass a list, not a generator); ``options`` go to
    :func:`aliasing_report` (``names``, ``stride``, ``layout``, ``spectrum``...). The ``"other"``
    control needs batches of at least two images.
    """
    if isinstance(controls, str) or not controls:
        raise ValueError(f"controls must be a non-empty sequence of {list(CONTROLS)}")
    for control in controls:
        check_control(control)
    if len(set(controls)) != len(controls):
        raise ValueError(f"controls must be distinct, got {list(controls)}")
    data = list(batches)
    return ControlledAliasing(
        {
            control: aliasing_report(model, data, control=control, shift=shift, **options)
            for control in controls
        }
    )
