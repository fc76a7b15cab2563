"""Messages a detectron2 user meets on the first day say what to do: official Mask2Former names
get the name registered here, a damaged MODEL.WEIGHTS never gets torch's advice to load with
weights_only=False, and SyncBN on a multi-process CPU run is replaced before training starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

import sfm_d2
from sfm_d2.engine import SFMTrainer, default_argument_parser
from sfm_d2.engine.checkpointer import SFMCheckpointer
from sfm_d2.engine.cli import cpu_sync_norm_overrides, load_cfg
from sfm_d2.official_names import OFFICIAL_NAMES, check_registered_names
from sfm_d2.safe_load import CorruptCheckpointError

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "SFM-Mask2Former" / "configs"
SFM_ADE_SWIN = CONFIGS / "ade20k" / "swin" / "sfm_maskformer2_swin_tiny_bs16_160k.yaml"
SFM_CITYSCAPES_R50 = CONFIGS / "cityscapes" / "sfm_maskformer2_R50_bs16_90k.yaml"
TINY = Path(__file__).parent / "configs" / "tiny_semseg.yaml"
OFFICIAL = list(OFFICIAL_NAMES)


def official_opts(*keys: str) -> list[str]:
    return [part for key in keys for part in (key, OFFICIAL_NAMES[key][0])]


@pytest.mark.parametrize("key", OFFICIAL)
def test_each_official_name_gets_ours(key: str) -> None:
    args = ["--config-file", str(SFM_ADE_SWIN), *official_opts(key)]
    with pytest.raises(ValueError, match="sfm_d2 registers them under its own names") as error:
        load_cfg(default_argument_parser().parse_args(args))
    assert str(error.value).endswith(
        f"  {key} {OFFICIAL_NAMES[key][1]}   (not {OFFICIAL_NAMES[key][0]!r})"
    )


def test_every_official_name_is_listed_at_once() -> None:
    cfg = sfm_d2.load_config(SFM_ADE_SWIN, official_opts(*OFFICIAL))
    with pytest.raises(ValueError, match="not registered here") as error:
        check_registered_names(cfg)
    for key, (official, ours, _) in OFFICIAL_NAMES.items():
        assert f"  {key} {ours}   (not {official!r})" in str(error.value)


def test_the_trainer_gives_the_hint_before_detectron2s_key_error() -> None:
    cfg = sfm_d2.load_config(SFM_ADE_SWIN, [*official_opts("MODEL.META_ARCHITECTURE")])
    with pytest.raises(ValueError, match=r"MODEL\.META_ARCHITECTURE SFMMaskFormer"):
        SFMTrainer.build_model(cfg)


def test_shipped_and_plain_configs_pass(cfg: CfgNode) -> None:
    check_registered_names(sfm_d2.load_config(SFM_ADE_SWIN))
    # detectron2's SemanticSegmentor: the Mask2Former decoder names (official defaults) unused.
    cfg.merge_from_file(str(TINY))
    assert cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME == "MultiScaleMaskedTransformerDecoder"
    check_registered_names(cfg)


@pytest.fixture
def official_meta_arch_registered() -> Iterator[None]:
    """As if the official Mask2Former were imported: its name is then the user's choice."""
    META_ARCH_REGISTRY._obj_map["MaskFormer"] = object
    try:
        yield
    finally:
        del META_ARCH_REGISTRY._obj_map["MaskFormer"]


def test_a_registered_official_name_is_left_alone(official_meta_arch_registered: None) -> None:
    check_registered_names(
        sfm_d2.load_config(SFM_ADE_SWIN, official_opts("MODEL.META_ARCHITECTURE"))
    )


@pytest.mark.parametrize(
    "content",
    [b"\xf1" + bytes(range(200)), b"\x80\x02}q\x00X\x01\x00\x00\x00a\x95."],
    ids=["not a pickle", "a bad opcode inside"],
)
def test_damaged_weights_never_suggest_unsafe_loading(content: bytes, tmp_path: Path) -> None:
    """torch's weights-only error advises re-running with weights_only=False; ours names the
    file and the parser's reason only (MODEL.WEIGHTS goes through resume_or_load(resume=False))."""
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as error:
        SFMCheckpointer(nn.Linear(2, 2)).resume_or_load(str(weights), resume=False)
    assert "weights_only` set to `False`" in str(error.value.__cause__)  # what torch said
    message = str(error.value)
    assert message.startswith(f"{weights}: not a readable checkpoint (UnpicklingError: ")
    assert "Unsupported operand" in message
    assert "weights_only" not in message
    assert "arbitrary code" not in message


def test_shipped_syncbn_configs_get_naive_sync_bn_on_cpu() -> None:
    ade = sfm_d2.load_config(SFM_ADE_SWIN)
    assert cpu_sync_norm_overrides(ade) == ["MODEL.SFM.NORM", "naiveSyncBN"]
    cityscapes = sfm_d2.load_config(SFM_CITYSCAPES_R50)
    assert cpu_sync_norm_overrides(cityscapes) == [
        "MODEL.RESNETS.NORM", "naiveSyncBN",
        "MODEL.SFM.NORM", "naiveSyncBN",
    ]  # fmt: skip
    fixed = sfm_d2.load_config(SFM_CITYSCAPES_R50, cpu_sync_norm_overrides(cityscapes))
    assert cpu_sync_norm_overrides(fixed) == []


def test_naive_sync_bn_builds_and_normalizes_like_bn_in_one_process() -> None:
    """The replacement is a BatchNorm2d with the same parameters and buffers (checkpoints load
    either way); in one process it normalizes exactly as BatchNorm2d."""
    from detectron2.layers import NaiveSyncBatchNorm, get_norm

    naive = get_norm("naiveSyncBN", 4)
    assert isinstance(naive, NaiveSyncBatchNorm)
    plain = nn.BatchNorm2d(4)
    assert naive.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(3, 4, 5, 6)
    torch.testing.assert_close(naive.train()(x), plain.train()(x))
