"""A trained Mask2Former into SFMMaskFormer: official model-zoo files load as they are, SFM added
to the trained model starts as that model, and tools/convert_mask2former.py reports the keys.

The trained models are tiny random Hugging Face Mask2Formers (hf_mask2former_checks.py), which
test_m2f_hf_equivalence.py shows to compute what our plain model computes.
"""

from __future__ import annotations

import importlib.util
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sfm_d2.hf_mask2former import convert_hf_state_dict

from . import hf_mask2former_checks as hf

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def relative_position_index(window: int) -> np.ndarray[Any, Any]:
    """The official Swin's persistent buffer: index of the bias of every token pair."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(
        2, -1
    )
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def write_official(
    model: torch.nn.Module, path: Path, window: int, *, heuristics: bool = False
) -> list[str]:
    """The model written as Mask2Former's model zoo does: a pickled dict whose "model" holds
    numpy arrays under the official names, Swin's relative_position_index buffers included.
    Returns the names of those buffers."""
    state = {k: v.numpy() for k, v in convert_hf_state_dict(model.state_dict()).model.items()}
    derived = [
        key.replace("relative_position_bias_table", "relative_position_index")
        for key in state
        if key.endswith("attn.relative_position_bias_table")
    ]
    for key in derived:
        state[key] = relative_position_index(window)
    payload: dict[str, Any] = {"model": state, "__author__": "Mask2Former model zoo (test copy)"}
    if heuristics:
        payload["matching_heuristics"] = True
    with open(path, "wb") as file:
        pickle.dump(payload, file, protocol=2)
    return derived


def module_groups(keys: list[str]) -> set[str]:
    return {re.sub(r"^(.*?(ars\.res\d|mask_refiner))\..*", r"\1", k) for k in keys}


@pytest.mark.parametrize("heuristics", [False, True], ids=["exact-names", "matching-heuristics"])
@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_official_file_loads_as_it_is(backbone: str, heuristics: bool, tmp_path: Path) -> None:
    reference = hf.hf_model(backbone, seed=4)
    path = tmp_path / "model_final.pkl"
    derived = write_official(reference, path, window=3, heuristics=heuristics)
    options = hf.hf_config_options_of(reference)
    converted = hf.Converted(path, options)
    ours, report = hf.our_model(converted, sfm=False)
    assert report.ok, report.format()
    assert report.new == []
    assert sorted(report.ignored) == sorted(derived)  # rebuilt from the window size
    outputs = hf.our_outputs(ours, hf.images())
    expected = hf.hf_outputs(reference.double(), outputs["input"])
    for (ours_cls, ours_mask), (hf_cls, hf_mask) in zip(outputs["layers"], expected["layers"], strict=True):  # fmt: skip
        assert hf.relative_error(ours_cls, hf_cls) <= 1e-10
        assert hf.relative_error(ours_mask, hf_mask) <= 1e-10
    sfm_report = hf.our_model(converted, sfm=True)[1]
    assert sfm_report.ok, sfm_report.format()
    assert module_groups(sfm_report.new) == {
        "backbone.ars.res3", "backbone.ars.res4", "backbone.ars.res5",
        "sem_seg_head.pixel_decoder.mask_refiner",
    }  # fmt: skip
    assert sfm_report.loaded == report.loaded


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"]
)
@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_sfm_on_a_trained_model_starts_as_that_model(
    backbone: str, dtype: torch.dtype, tolerance: float, tmp_path: Path
) -> None:
    """ARS before res3-res5 and all four MODEL.SFM.MASK2FORMER switches on, the trained weights
    loaded: at initialisation sem_seg is the plain model's. In float64 the two agree to rounding
    (~1e-14: every SFM part is exactly the identity); in float32 the difference is float noise,
    of the size of the plain model's own float32-vs-float64 error (~3e-6 on these random
    weights, drawn with spread 0.1: random models amplify rounding more than trained ones)."""
    converted = hf.save_and_convert(hf.hf_model(backbone, seed=6, spread=0.1), tmp_path)
    plain, _ = hf.our_model(converted, sfm=False, dtype=dtype)
    sfm, report = hf.our_model(converted, sfm=True, dtype=dtype, seed=1)
    assert report.ok, report.format()
    assert module_groups(report.new) == {
        "backbone.ars.res3", "backbone.ars.res4", "backbone.ars.res5",
        "sem_seg_head.pixel_decoder.mask_refiner",
    }  # fmt: skip
    decoder, predictor = sfm.sem_seg_head.pixel_decoder, sfm.sem_seg_head.predictor
    assert sorted(sfm.backbone.ars) == ["res3", "res4", "res5"]
    assert decoder.warped_positional_encoding
    assert decoder.nonuniform_upsample
    assert decoder.mask_refiner is not None
    assert predictor.warped_positional_encoding
    assert predictor.warped_mask_attention
    ours = hf.our_outputs(sfm, hf.images())["sem_seg"]
    reference = hf.our_outputs(plain, hf.images())["sem_seg"]
    for score, expected in zip(ours, reference, strict=True):
        assert hf.relative_error(score, expected) <= tolerance


def load_tool() -> Any:
    spec = importlib.util.spec_from_file_location(
        "convert_mask2former", REPO / "tools" / "convert_mask2former.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_converts_a_directory_and_checks_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = load_tool()
    model = hf.hf_model("swin", seed=7)
    model.save_pretrained(str(tmp_path / "hf"))
    opts = hf.our_opts(hf.hf_config_options_of(model), sfm=True)
    output = tmp_path / "converted.pkl"
    args = [str(tmp_path / "hf"), str(output), "--config-file", str(hf.TINY), "--opts", *opts]
    assert tool.main(args) == 0
    printed = capsys.readouterr().out
    assert "Hugging Face Mask2Former, swin backbone" in printed
    assert "MODEL.SWIN.WINDOW_SIZE 3" in printed
    assert "new (not pretrained):" in printed
    assert "MISSING" not in printed
    assert "UNEXPECTED" not in printed
    # The written file is then checked as it is (as an official model-zoo file would be).
    assert tool.main([str(output), "--config-file", str(hf.TINY), "--opts", *opts]) == 0
    # A config that does not describe the checkpoint fails, naming the key.
    wrong = [*opts, "MODEL.MASK_FORMER.PRE_NORM", "True", "MODEL.SWIN.EMBED_DIM", "32"]
    args = [str(tmp_path / "hf"), str(output), "--config-file", str(hf.TINY), "--opts", *wrong]
    assert tool.main(args) == 1
    printed = capsys.readouterr().out
    assert "CONFIG MISMATCH MODEL.MASK_FORMER.PRE_NORM" in printed
    assert "SHAPE MISMATCH: backbone.patch_embed.proj.weight" in printed
