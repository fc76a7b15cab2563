"""projects/SFM-Mask2Former/train_net.py end to end, and the engine pieces it is made of.

The end-to-end tests run the script as a user does (a subprocess): train the SFM quick schedule
(4 iterations on the quick fine-detail copy, a checkpoint every 2) and evaluate; resume a copy
of that run from its iteration-2 checkpoint; evaluate the final checkpoint with --eval-only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from sfm_d2.data.config_datasets import QUICK_FINEDETAIL_NAMES
from sfm_d2.engine import SFMTrainer, default_argument_parser, register_datasets
from sfm_d2.engine.cli import launch_device, load_cfg
from sfm_d2.evaluation import SFMSemSegEvaluator

REPO = Path(__file__).resolve().parents[3]
PROJECT = REPO / "projects" / "SFM-Mask2Former"
TRAIN_NET = PROJECT / "train_net.py"
QUICK = PROJECT / "configs" / "quick_schedules"
SFM_QUICK = QUICK / "sfm_maskformer2_swin_micro_finedetail_instant_test.yaml"
VAL = QUICK_FINEDETAIL_NAMES["val"]
EVALUATION = Path("inference") / VAL / "sem_seg_evaluation.json"


def train_net(env: dict[str, str], *args: str) -> str:
    """Run train_net.py with the SFM quick schedule; return its log (stdout + stderr)."""
    command = [sys.executable, str(TRAIN_NET), "--config-file", str(SFM_QUICK), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return log


def last_metrics(output_dir: Path) -> dict[str, Any]:
    """The last training record (one with an ``lr``) of detectron2's metrics.json."""
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "lr" in record][-1]


def sem_seg(output_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads((output_dir / EVALUATION).read_text())["sem_seg"]
    return results


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # One thread: on a shared 2-core machine two spinning OpenMP threads made a step 20x slower.
    cache = tmp_path_factory.mktemp("sfm_cache")
    return {**os.environ, "SFM_DATA_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("train") / "run"
    train_net(env, "OUTPUT_DIR", str(output_dir))
    return output_dir


def test_train_net_trains_checkpoints_and_evaluates(trained: Path) -> None:
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth", "config.yaml"):
        assert (trained / name).is_file(), name
    assert (trained / "last_checkpoint").read_text().strip() == "model_final.pth"
    checkpoint = torch.load(trained / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 3
    scheduler = checkpoint["trainer"]["hooks"]["LRScheduler"]  # WarmupPolyLR's state
    assert scheduler["last_epoch"] == 4
    assert scheduler["max_iters"] == 4
    record = last_metrics(trained)
    assert record["iteration"] == 3
    assert math.isfinite(record["total_loss"])
    assert record["total_loss"] > 0
    results = sem_seg(trained)
    assert 0.0 <= results["mIoU"] <= 100.0
    assert 0.0 < results["pACC"] <= 100.0
    assert any(key.startswith("IoU-") for key in results)


def test_resume_continues_the_run_and_its_schedule(
    trained: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """A run "killed" after its iteration-2 checkpoint continues from there with --resume."""
    resumed = tmp_path / "resumed"
    shutil.copytree(trained, resumed)
    for name in ("model_0000003.pth", "model_final.pth", "metrics.json"):
        (resumed / name).unlink()
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    log = train_net(env, "--resume", "OUTPUT_DIR", str(resumed))
    assert "Starting training from iteration 2" in log
    assert torch.load(resumed / "model_final.pth", weights_only=False)["iteration"] == 3
    record = last_metrics(resumed)
    assert record["iteration"] == 3
    # The LR of the last iteration equals the uninterrupted run's: the scheduler state resumed
    # (a fresh scheduler would restart the warmup and poly decay at the resumed iteration).
    assert record["lr"] == pytest.approx(last_metrics(trained)["lr"], rel=1e-9)
    assert math.isfinite(sem_seg(resumed)["mIoU"])


def test_eval_only_reproduces_the_final_metrics(
    trained: Path, env: dict[str, str], tmp_path: Path
) -> None:
    evaluated = tmp_path / "eval"
    weights = trained / "model_final.pth"
    train_net(env, "--eval-only", "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(evaluated))
    assert sem_seg(evaluated) == pytest.approx(sem_seg(trained), rel=1e-6, nan_ok=True)
    assert not (evaluated / "model_final.pth").exists()  # nothing trained


def test_quick_datasets_register_with_the_finedetail_metadata(cfg: CfgNode) -> None:
    cfg.merge_from_file(str(SFM_QUICK))
    register_datasets(cfg)
    register_datasets(cfg)  # idempotent
    for name in QUICK_FINEDETAIL_NAMES.values():
        assert name in DatasetCatalog.list()
        metadata = MetadataCatalog.get(name)
        assert len(metadata.stuff_classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        assert metadata.ignore_label == cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        assert metadata.evaluator_type == "sem_seg"


def test_evaluator_by_type(cfg: CfgNode, tmp_path: Path) -> None:
    cfg.OUTPUT_DIR = str(tmp_path)
    classes = ["a", "b"]
    for name, evaluator_type in (("sfm_test_cs", "cityscapes_sem_seg"), ("sfm_test_coco", "coco")):
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, list)  # no images: the evaluator is only built
            MetadataCatalog.get(name).set(stuff_classes=classes, evaluator_type=evaluator_type)
    assert isinstance(SFMTrainer.build_evaluator(cfg, "sfm_test_cs"), SFMSemSegEvaluator)
    with pytest.raises(ValueError, match="evaluator_type 'coco'"):
        SFMTrainer.build_evaluator(cfg, "sfm_test_coco")


def test_cli_refuses_what_cannot_run() -> None:
    parser = default_argument_parser()
    with pytest.raises(ValueError, match="--config-file is required"):
        load_cfg(parser.parse_args([]))
    cuda = load_cfg(parser.parse_args(["--config-file", str(SFM_QUICK), "MODEL.DEVICE", "cuda"]))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            launch_device(cuda)
    amp = ["--config-file", str(SFM_QUICK), "SOLVER.AMP.ENABLED", "True"]
    with pytest.raises(ValueError, match="AMP trainer needs CUDA"):
        launch_device(load_cfg(parser.parse_args(amp)))
    assert launch_device(load_cfg(parser.parse_args(["--config-file", str(SFM_QUICK)]))) == "cpu"
