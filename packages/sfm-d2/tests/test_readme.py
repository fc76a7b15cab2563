"""The READMEs' examples run as written: sfm-d2's quick start (an SFM backbone from a yaml in three
lines) and the project's walkthrough for fine-tuning SFM on a trained Mask2Former."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from sfm_d2 import load_config
from sfm_d2.engine import default_argument_parser

from . import hf_mask2former_checks as hf

README = Path(__file__).parents[1] / "README.md"
REPO = Path(__file__).parents[3]


def quickstart() -> str:
    text = README.read_text()
    match = re.search(r"<!-- quickstart:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its quick-start block"
    return match.group(1)


def test_quickstart_is_three_lines() -> None:
    assert len([line for line in quickstart().splitlines() if line.strip()]) == 3


def test_quickstart_builds_an_sfm_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    namespace: dict[str, object] = {}
    exec(compile(quickstart(), str(README), "exec"), namespace)
    backbone = namespace["model"]
    assert isinstance(backbone, torch.nn.Module)
    assert sorted(backbone.ars) == ["res3", "res4", "res5"]  # type: ignore[attr-defined]
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 64, 96))  # type: ignore[operator]
    assert out["res5"].shape == (1, 2048, 2, 3)
    assert out["res5_positions"].shape == (1, 2, 2, 3)


# --- projects/SFM-Mask2Former/README.md: fine-tune SFM on a trained Mask2Former -----------------

PROJECT = REPO / "projects" / "SFM-Mask2Former"


def walkthrough() -> list[list[str]]:
    """The walkthrough's commands (continuations joined, comments dropped), shell-split."""
    text = (PROJECT / "README.md").read_text()
    match = re.search(r"<!-- finetune-walkthrough:[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert match, "projects/SFM-Mask2Former/README.md lost its fine-tuning walkthrough"
    joined = match.group(1).replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def load_convert_tool() -> Any:
    spec = importlib.util.spec_from_file_location(
        "convert_mask2former", REPO / "tools" / "convert_mask2former.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_walkthrough_converts_then_trains_and_evaluates_the_converted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert, cd, train_sfm, train_plain, evaluate = walkthrough()
    # 1. The conversion as written, on a Hugging Face directory of the README's name holding a
    # tiny model (the config's full-size widths are overridden to fit it, hence --opts).
    assert convert[:2] == ["python", "tools/convert_mask2former.py"]
    source, output = convert[2], convert[3]
    model = hf.hf_model("swin", seed=11)
    model.save_pretrained(str(tmp_path / source))
    config = REPO / convert[convert.index("--config-file") + 1]
    assert config.is_file()
    (tmp_path / "projects").symlink_to(REPO / "projects")  # the README runs from the root
    monkeypatch.chdir(tmp_path)
    tiny = hf.our_opts(hf.hf_config_options_of(model), sfm=True)
    tool = load_convert_tool()
    assert tool.main([*convert[2:], "--opts", *tiny]) == 0
    assert (tmp_path / output).is_file()
    # 2. train_net from the project folder, SFM and plain control, on that file.
    assert cd == ["cd", "projects/SFM-Mask2Former"]
    runs = {}
    for command in (train_sfm, train_plain, evaluate):
        assert command[:2] == ["python", "train_net.py"]
        args = default_argument_parser().parse_args(command[2:])
        assert (PROJECT / args.config_file).is_file()
        cfg = load_config(PROJECT / args.config_file, args.opts)
        runs[args.config_file, args.eval_only] = cfg
        if not args.eval_only:
            assert (PROJECT / cfg.MODEL.WEIGHTS).resolve() == (REPO / output).resolve()
            assert Path(cfg.MODEL.WEIGHTS).name == Path(load_config(config).MODEL.WEIGHTS).name
            assert ([] if "/maskformer2_" in args.config_file else ["res3", "res4", "res5"]) == cfg.MODEL.SFM.ARS_STAGES  # fmt: skip
    # 3. Evaluation reads the SFM run's final checkpoint.
    eval_cfg = runs[train_sfm[train_sfm.index("--config-file") + 1], True]
    sfm_cfg = runs[train_sfm[train_sfm.index("--config-file") + 1], False]
    assert f"{sfm_cfg.OUTPUT_DIR}/model_final.pth" == eval_cfg.MODEL.WEIGHTS
