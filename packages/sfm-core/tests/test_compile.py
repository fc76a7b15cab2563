"""The modules trace whole with torch.compile: backend choice must be plain, traceable work."""

from __future__ import annotations

import torch

from sfm_core.nn import AdaptiveResampling, LocalPixelRelation


def test_ars_and_lprm_compile_without_graph_breaks() -> None:
    ars = AdaptiveResampling(8).eval()
    lprm = LocalPixelRelation(8, (1, 2)).eval()
    x, guide = torch.randn(2, 8, 13, 17), torch.randn(2, 8, 13, 17)
    compiled_ars = torch.compile(ars, fullgraph=True, backend="aot_eager")
    compiled_lprm = torch.compile(lprm, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled_ars(x).features, ars(x).features)
    torch.testing.assert_close(compiled_lprm(x, guide), lprm(x, guide))
