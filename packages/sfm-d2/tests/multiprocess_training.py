"""Train (or evaluate) tiny_semseg_gn.yaml with SFMTrainer on N CPU processes, via train_net's
``main`` and :func:`sfm_d2.launch.launch` (for test_multiprocess_equality).

Usage: python multiprocess_training.py OUTPUT_DIR NUM_WORKERS [train_net flags and overrides].
A script, not a test module: the spawned workers unpickle ``worker`` by this file's path. The
dataset (tiny_training.write_dataset: every label has the same 4 ignored pixels, so a batch mean
of the loss equals the mean of per-image means) is written once, before the workers start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sfm_d2  # noqa: F401  (before detectron2: its compat layer must run first)
from sfm_d2.engine import default_argument_parser, main
from sfm_d2.launch import launch

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from tiny_training import CLASSES, DATASET, records, write_dataset  # this script's folder

CONFIG = Path(__file__).parent / "configs" / "tiny_semseg_gn.yaml"


def worker(args: argparse.Namespace, data: str) -> None:
    """One process: register the dataset (each process has its own catalog), then train_net."""
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, lambda: records(Path(data)))
        MetadataCatalog.get(DATASET).set(
            stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg"
        )
    main(args)


if __name__ == "__main__":
    output_dir, workers, *rest = sys.argv[1:]
    data = Path(output_dir) / "data"
    write_dataset(data, count=8)
    flags = ["--config-file", str(CONFIG), *rest, "OUTPUT_DIR", output_dir]
    args = default_argument_parser().parse_args(flags)
    launch(worker, int(workers), dist_url="auto", args=(args, str(data)), device="cpu")
