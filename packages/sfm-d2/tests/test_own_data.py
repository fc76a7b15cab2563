"""Training on your own folders of images and label maps without writing code: the
``DATASETS.SFM_FOLDERS`` keys, registered by train_net in every worker process.

The end-to-end test is what a new user runs: ``train_net.py --num-gpus 2`` on a CPU machine (two
gloo workers) with a config whose ``MODEL.SFM.NORM`` is ``SyncBN``, as the shipped ADE20K and
Cityscapes configs have; then ``--eval-only`` from the ``config.yaml`` the run wrote.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from sfm_d2.data import BadDataError, register_datasets
from sfm_d2.data.config_datasets import register_folder_datasets

REPO = Path(__file__).resolve().parents[3]
TRAIN_NET = REPO / "projects" / "SFM-Mask2Former" / "train_net.py"
TINY = Path(__file__).parent / "configs" / "tiny_semseg.yaml"
CLASSES = ["background", "bar", "disc"]


def write_folders(root: Path, split: str, count: int) -> None:
    """``root/images/<split>/<i>.png`` and ``root/labels/<split>/<i>.png``, 64x96: a bar (1) and
    a disc (2) on noise, a few ignored pixels (255)."""
    rng = np.random.default_rng(len(split) + count)
    yy, xx = np.mgrid[:64, :96]
    for folder in ("images", "labels"):
        (root / folder / split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label = np.zeros((64, 96), np.uint8)
        x0 = int(rng.integers(5, 88))
        label[:, x0 : x0 + 3] = 1
        cy, cx = int(rng.integers(15, 49)), int(rng.integers(15, 81))
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = 2
        label[:2, :2] = 255
        colours = np.array([[40, 40, 40], [230, 40, 40], [40, 40, 230]], np.float64)
        image = colours[np.minimum(label, 2)] + rng.normal(0, 20, (64, 96, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
            root / "images" / split / f"{i}.png"
        )
        Image.fromarray(label).save(root / "labels" / split / f"{i}.png")


def folder_opts(root: Path, suffix: str = "") -> list[str]:
    """The command-line overrides of the README: two datasets from the folders of ``root``."""
    train, val = f"own_train{suffix}", f"own_val{suffix}"
    return [
        "DATASETS.SFM_FOLDERS.NAMES", f"('{train}', '{val}')",
        "DATASETS.SFM_FOLDERS.IMAGE_ROOTS", f"('{root}/images/train', '{root}/images/val')",
        "DATASETS.SFM_FOLDERS.LABEL_ROOTS", f"('{root}/labels/train', '{root}/labels/val')",
        "DATASETS.SFM_FOLDERS.CLASSES", str(tuple(CLASSES)),
        "DATASETS.SFM_FOLDERS.IMAGE_EXT", ".png",
        "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TEST", f"('{val}',)",
    ]  # fmt: skip


def merged(cfg: CfgNode, opts: list[str]) -> CfgNode:
    cfg.merge_from_file(str(TINY))
    cfg.merge_from_list(opts)
    return cfg


def test_folders_register_with_their_classes_and_load(cfg: CfgNode, tmp_path: Path) -> None:
    write_folders(tmp_path, "train", 3)
    write_folders(tmp_path, "val", 2)
    cfg = merged(cfg, folder_opts(tmp_path, "_unit"))
    register_datasets(cfg)
    register_datasets(cfg)  # a second call (another trainer in the same process) is harmless
    records = DatasetCatalog.get("own_train_unit")
    assert [Path(r["file_name"]).name for r in records] == ["0.png", "1.png", "2.png"]
    assert all(Path(r["sem_seg_file_name"]).parent.name == "train" for r in records)
    assert len(DatasetCatalog.get("own_val_unit")) == 2
    metadata = MetadataCatalog.get("own_val_unit")
    assert metadata.stuff_classes == CLASSES
    assert metadata.ignore_label == cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    assert metadata.evaluator_type == "sem_seg"


def test_folders_without_classes_get_numbered_ones(cfg: CfgNode, tmp_path: Path) -> None:
    write_folders(tmp_path, "train", 1)
    write_folders(tmp_path, "val", 1)
    opts = folder_opts(tmp_path, "_numbered")
    opts[opts.index("DATASETS.SFM_FOLDERS.CLASSES") + 1] = "()"
    register_datasets(merged(cfg, opts))
    assert MetadataCatalog.get("own_train_numbered").stuff_classes == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DATASETS.SFM_FOLDERS.LABEL_ROOTS", "('only_one',)", "one entry per dataset"),
        ("DATASETS.SFM_FOLDERS.NAMES", "('a', 'a')", "NAMES must be distinct"),
        ("DATASETS.SFM_FOLDERS.IMAGE_ROOTS", "('', 'x')", "IMAGE_ROOTS must be folder paths"),
        ("DATASETS.SFM_FOLDERS.CLASSES", "('a', 'b')", "CLASSES names 2 classes but MODEL"),
        ("DATASETS.SFM_FOLDERS.LABEL_EXT", "''", "SFM_FOLDERS: label_ext must be"),
    ],
)
def test_bad_folder_keys_are_named(
    cfg: CfgNode, tmp_path: Path, key: str, value: str, message: str
) -> None:
    cfg = merged(cfg, folder_opts(tmp_path, "_bad"))
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        register_folder_datasets(cfg)


def test_missing_folders_are_reported_when_the_dataset_loads(cfg: CfgNode, tmp_path: Path) -> None:
    register_datasets(merged(cfg, folder_opts(tmp_path / "nowhere", "_missing")))
    with pytest.raises(BadDataError, match="image_root is not a directory"):
        DatasetCatalog.get("own_train_missing")


def train_net(env: dict[str, str], *args: str) -> str:
    command = [sys.executable, str(TRAIN_NET), *args]
    # 206 s for the 2-process training and 66 s for the evaluation on a 2-core machine at load 14.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    return log


@pytest.mark.slow
def test_two_cpu_workers_train_on_folders_with_syncbn_in_the_config(tmp_path: Path) -> None:
    """Both workers register the folders from the config; SyncBN becomes naiveSyncBN up front,
    with a warning naming the key; the 2-process evaluation (gathered predictions included)
    equals a 1-process --eval-only of the final weights from the run's own config.yaml."""
    data, run, evaluated = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    write_folders(data, "train", 4)
    write_folders(data, "val", 3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SyncBN in the backbone too: synchronized statistics keep both workers' running means equal
    # (with plain BN each worker's would differ, and so would its half of the evaluation).
    opts = [*folder_opts(data), "MODEL.SFM.NORM", "SyncBN", "MODEL.RESNETS.NORM", "SyncBN"]
    opts += ["SOLVER.MAX_ITER", "2"]
    log = train_net(
        env, "--num-gpus", "2", "--config-file", str(TINY), *opts, "OUTPUT_DIR", str(run)
    )
    assert "MODEL.RESNETS.NORM, MODEL.SFM.NORM: SyncBN works only on GPUs under DDP" in log
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["MODEL"]["SFM"]["NORM"] == saved["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"
    assert saved["DATASETS"]["SFM_FOLDERS"]["NAMES"] == ["own_train", "own_val"]
    losses = [
        record["total_loss"]
        for record in map(json.loads, (run / "metrics.json").read_text().splitlines())
        if "total_loss" in record
    ]
    assert losses
    assert all(math.isfinite(loss) for loss in losses)

    train_net(
        env,
        "--config-file", str(run / "config.yaml"),
        "--eval-only",
        "MODEL.WEIGHTS", str(run / "model_final.pth"),
        "OUTPUT_DIR", str(evaluated),
    )  # fmt: skip
    folder = Path("inference") / "own_val"
    two = json.loads((run / folder / "sem_seg_evaluation.json").read_text())
    one = json.loads((evaluated / folder / "sem_seg_evaluation.json").read_text())
    assert two["classes"] == CLASSES
    assert two["sem_seg"] == one["sem_seg"]
    predictions = json.loads((run / folder / "sem_seg_predictions.json").read_text())
    assert {Path(p["file_name"]).name for p in predictions} == {"0.png", "1.png", "2.png"}
    assert predictions == json.loads((evaluated / folder / "sem_seg_predictions.json").read_text())
