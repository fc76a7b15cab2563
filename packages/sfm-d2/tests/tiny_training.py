"""Train the tiny SFM model of configs/tiny_semseg.yaml through ``sfm_d2.launch`` (for test_launch).

Usage: python tiny_training.py OUTPUT_DIR NUM_WORKERS. A script, not a test module: the spawned
workers must be able to unpickle ``main`` (by this file's path, as for any train_net.py).
Writes synthetic images and labels into OUTPUT_DIR/data, trains with DefaultTrainer, evaluates
with SemSegEvaluator, and leaves OUTPUT_DIR/rank<N>.json per worker for the test to read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import sfm_d2  # before detectron2: its compat layer must run first
from sfm_d2.launch import launch

# isort: split
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

CONFIG = Path(__file__).parent / "configs" / "tiny_semseg.yaml"
DATASET = "sfm_d2_tiny_semseg"
CLASSES = ["background", "bar", "disc"]


def write_dataset(root: Path, count: int = 4, height: int = 64, width: int = 96) -> None:
    """Images whose classes are visible: a thin bar (class 1) and a disc (class 2) on noise."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    for i in range(count):
        label = np.zeros((height, width), np.uint8)
        x0 = int(rng.integers(5, width - 8))
        label[:, x0 : x0 + 3] = 1
        cy, cx, r = int(rng.integers(15, height - 15)), int(rng.integers(15, width - 15)), 10
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
        label[:2, :2] = 255  # a few ignored pixels
        colours = np.array([[40, 40, 40], [230, 40, 40], [40, 40, 230]], np.float64)
        image = colours[np.minimum(label, 2)] + rng.normal(0, 20, (height, width, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / f"{i}.png")
        Image.fromarray(label).save(root / f"{i}_label.png")


def records(root: Path) -> list[dict[str, Any]]:
    return [
        {
            "file_name": str(path),
            "sem_seg_file_name": str(path.with_name(f"{path.stem}_label.png")),
            "height": 64,
            "width": 96,
        }
        for path in sorted(root.glob("[0-9].png"))
    ]


class Trainer(DefaultTrainer):  # type: ignore[misc]
    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> SemSegEvaluator:
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=cfg.OUTPUT_DIR)


def main(output_dir: str) -> None:
    setup_logger(output_dir, distributed_rank=comm.get_rank())
    data = Path(output_dir) / "data"
    DatasetCatalog.register(DATASET, lambda: records(data))
    MetadataCatalog.get(DATASET).set(
        stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg"
    )
    cfg = sfm_d2.add_sfm_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    summary = {
        "rank": comm.get_rank(),
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "ddp": isinstance(trainer.model, DistributedDataParallel),
        "threads": torch.get_num_threads(),
    }
    (Path(output_dir) / f"rank{comm.get_rank()}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    out, workers = sys.argv[1], int(sys.argv[2])
    write_dataset(Path(out) / "data")
    launch(main, workers, dist_url="auto", args=(out,), device="cpu")
