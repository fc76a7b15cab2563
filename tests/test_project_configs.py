"""Every yaml shipped under projects/*/configs loads, and every model config builds (on CPU).

Also the pairing rule of projects/SFM-Mask2Former: each ``sfm_<name>.yaml`` differs from its
baseline ``<name>.yaml`` only in ``MODEL.SFM.*``, and the baseline has every SFM part off.
Runs in the tests-d2 session (it needs detectron2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import sfm_d2  # before detectron2: its compatibility layer must run first

# isort: split
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY

from sfm_d2.engine.solver import SFM_MODULE_TYPES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("projects/*/configs/**/*.yaml"))
MODELS = [path for path in CONFIGS if not path.name.startswith("Base-")]
SFM_VARIANTS = [path for path in MODELS if path.name.startswith("sfm_")]


def short(path: Path) -> str:
    return str(path.relative_to(REPO / "projects"))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def test_configs_are_found() -> None:
    assert len(MODELS) >= 10
    assert len(SFM_VARIANTS) * 2 == len(MODELS)


@pytest.mark.parametrize("path", CONFIGS, ids=short)
def test_config_loads(path: Path) -> None:
    cfg = sfm_d2.load_config(path)
    assert isinstance(cfg, CfgNode)


@pytest.mark.parametrize("path", MODELS, ids=short)
def test_model_config_builds(path: Path) -> None:
    cfg = sfm_d2.load_config(path, ["MODEL.DEVICE", "cpu"])
    # detectron2's build_model on the meta device (shapes only: the ADE20K/Cityscapes models are
    # full size), without its final .to(MODEL.DEVICE), which meta tensors cannot do.
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    has_sfm = any(isinstance(m, SFM_MODULE_TYPES) for m in model.modules())
    assert has_sfm == path.name.startswith("sfm_")


@pytest.mark.parametrize("path", SFM_VARIANTS, ids=short)
def test_sfm_variant_differs_from_its_baseline_only_in_model_sfm(path: Path) -> None:
    baseline_path = path.with_name(path.name.removeprefix("sfm_"))
    sfm, baseline = flatten(sfm_d2.load_config(path)), flatten(sfm_d2.load_config(baseline_path))
    differing = {key for key in sfm.keys() | baseline.keys() if sfm.get(key) != baseline.get(key)}
    assert differing
    assert all(key.startswith("MODEL.SFM.") for key in differing), sorted(differing)
    assert baseline["MODEL.SFM.ARS_STAGES"] == []
    assert baseline["MODEL.SFM.EDGE_LOSS_WEIGHT"] == 0.0
    switches = [key for key in baseline if key.startswith("MODEL.SFM.MASK2FORMER.")]
    assert switches
    assert not any(baseline[key] for key in switches)
    assert all(sfm[key] for key in switches)
    assert sfm["MODEL.SFM.ARS_STAGES"] == ["res3", "res4", "res5"]
