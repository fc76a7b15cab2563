"""Paired arms: a baseline and an SFM model built with the same seed share what they share.

SFM's own modules (ARS in the backbone, LPRM in the pixel decoder) are built on random streams of
their own, so every tensor both models have starts bit-identical, the global generator ends in
the same state (later draws coincide) and the trainer feeds both the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

import sfm_d2
from sfm_d2.data.config_datasets import register_datasets
from sfm_d2.engine import SFMTrainer
from sfm_d2.engine.resumable import seed_everything

TESTS = Path(__file__).parent
TINY = TESTS / "configs" / "tiny_mask2former.yaml"
QUICK = TESTS.parents[2] / "projects" / "SFM-Mask2Former" / "configs" / "quick_schedules"
SWITCHES = ("WARPED_POSITIONAL_ENCODING", "NONUNIFORM_UPSAMPLE", "LPRM", "WARPED_MASK_ATTENTION")
RESNET = ["MODEL.BACKBONE.NAME", "build_sfm_resnet_backbone", "MODEL.RESNETS.DEPTH", 18]
RESNET += ["MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
# The arms of the study: what is on besides the baseline.
ARMS = {
    "sfm": [],
    "ars-only": [f"MODEL.SFM.MASK2FORMER.{s}" for s in SWITCHES],
    "head-only": ["MODEL.SFM.ARS_STAGES"],
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def baseline_opts() -> list[Any]:
    opts: list[Any] = ["MODEL.SFM.ARS_STAGES", []]
    for switch in SWITCHES:
        opts += [f"MODEL.SFM.MASK2FORMER.{switch}", False]
    return opts


def arm_opts(arm: str) -> list[Any]:
    """Opts that turn the parts of ``arm`` off (the SFM config has everything on)."""
    opts: list[Any] = []
    for key in ARMS[arm]:
        opts += [key, [] if key.endswith("ARS_STAGES") else False]
    return opts


def build_seeded(cfg: CfgNode, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model built after ``torch.manual_seed(seed)`` and the global CPU state after it."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    return model, torch.get_rng_state()


def assert_shared_identical(baseline: nn.Module, sfm: nn.Module) -> list[str]:
    """Every tensor of ``baseline`` is in ``sfm`` with equal bits; returns the SFM-only names."""
    base_state, sfm_state = baseline.state_dict(), sfm.state_dict()
    assert set(base_state) <= set(sfm_state)
    different = [k for k, v in base_state.items() if not torch.equal(v, sfm_state[k])]
    assert different == []
    return sorted(set(sfm_state) - set(base_state))


@pytest.mark.parametrize("arm", sorted(ARMS))
@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_arms_built_with_one_seed_share_every_tensor_and_the_rng_state(
    arm: str, backbone: str
) -> None:
    extra = RESNET if backbone == "resnet" else []
    baseline, base_rng = build_seeded(sfm_d2.load_config(TINY, [*extra, *baseline_opts()]))
    sfm, sfm_rng = build_seeded(sfm_d2.load_config(TINY, [*extra, *arm_opts(arm)]))
    own = assert_shared_identical(baseline, sfm)
    prefixes = {name.split(".ars.")[0] if ".ars." in name else name.split(".")[0] for name in own}
    expected = {"sfm": 2, "ars-only": 1, "head-only": 1}[arm]
    assert len(prefixes) == expected, own  # the arm really adds its modules
    assert all(".ars." in name or ".mask_refiner." in name for name in own), own
    assert torch.equal(base_rng, sfm_rng)
    # The SFM modules themselves are reproducible, and depend on the seed.
    again, _ = build_seeded(sfm_d2.load_config(TINY, [*extra, *arm_opts(arm)]))
    other, _ = build_seeded(sfm_d2.load_config(TINY, [*extra, *arm_opts(arm)]), seed=1)
    sfm_state, again_state, other_state = sfm.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sfm_state[k], again_state[k]) for k in own)
    assert any(not torch.equal(sfm_state[k], other_state[k]) for k in own)


def test_ars_stages_get_unrelated_initialisations() -> None:
    """Each ARS has its own stream: stages of equal width do not start as copies of each other."""
    model, _ = build_seeded(sfm_d2.load_config(TINY))
    firsts = [
        ars.generator.context.branches[0][1].weight.flatten()[:4]
        for ars in model.backbone.ars.values()
    ]
    assert len(firsts) == 3
    assert not torch.equal(firsts[0], firsts[1])
    assert not torch.equal(firsts[1], firsts[2])


def quick_arm(name: str) -> tuple[nn.Module, Any]:
    """What ``SFMTrainer`` builds for a quick-schedule config (model, then train loader), seeded
    as train_net's ``default_setup`` seeds it."""
    cfg = sfm_d2.load_config(QUICK / name)
    cfg.freeze()
    register_datasets(cfg)
    seed_everything(cfg.SEED)
    model = SFMTrainer.build_model(cfg)
    return model, SFMTrainer.build_train_loader(cfg)


def first_batches(loader: Any, count: int) -> list[list[dict[str, Any]]]:
    stream = iter(loader)
    return [next(stream) for _ in range(count)]


def test_trainers_of_both_arms_start_alike_and_see_the_same_batches() -> None:
    baseline, base_loader = quick_arm("maskformer2_swin_micro_finedetail_instant_test.yaml")
    base_rng = torch.get_rng_state()
    sfm, sfm_loader = quick_arm("sfm_maskformer2_swin_micro_finedetail_instant_test.yaml")
    assert torch.equal(base_rng, torch.get_rng_state())
    assert_shared_identical(baseline, sfm)
    torch.rand(3)  # the stream does not depend on what the global generator did meanwhile
    batches = zip(first_batches(base_loader, 3), first_batches(sfm_loader, 3), strict=True)
    for base_batch, sfm_batch in batches:
        assert [x["file_name"] for x in base_batch] == [x["file_name"] for x in sfm_batch]
        for a, b in zip(base_batch, sfm_batch, strict=True):
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["sem_seg"], b["sem_seg"])
