"""Evaluate the case of test_evaluation with SFMSemSegEvaluator on 2 gloo processes.

Usage: python evaluator_gather.py FOLDER. FOLDER holds records.json, the ground-truth PNGs and
N_pred.npy; rank 0 evaluates image 0 and rank 1 images 1 and 2 (an uneven split). Each rank writes
rankR.json: rank 0 its results (NaN as null) and the world size, rank 1 null (only the main process
reports). The workers are forked from this fresh process after its imports, so they do not pay
for importing torch and detectron2 again (that is what keeps the test short); nothing here has
run a torch op before the fork.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import sfm_d2  # noqa: F401  (before detectron2: its compat layer must run first)
from sfm_d2.evaluation import SFMSemSegEvaluator

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

CLASSES = ["sky", "wire", "pole", "absent"]
SHARES = {0: [0], 1: [1, 2]}
JOIN_TIMEOUT_S = 300  # the workers are forked after the imports; gloo setup + evaluation remain


def worker(rank: int, root: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{root / 'rendezvous'}", rank=rank, world_size=2
    )
    records = json.loads((root / "records.json").read_text())
    DatasetCatalog.register("sfm_test_eval", lambda: records)
    MetadataCatalog.get("sfm_test_eval").set(stuff_classes=CLASSES, ignore_label=255)
    evaluator = SFMSemSegEvaluator("sfm_test_eval", distributed=True, boundary_width=1)
    evaluator.reset()
    for index in SHARES[rank]:
        pred = torch.from_numpy(np.load(root / f"{index}_pred.npy"))
        scores = torch.nn.functional.one_hot(pred, len(CLASSES)).permute(2, 0, 1).float()
        evaluator.process([records[index]], [{"sem_seg": scores}])
    results = evaluator.evaluate()
    report = None
    if results is not None:
        report = {
            "world_size": comm.get_world_size(),
            "sem_seg": {k: None if math.isnan(v) else v for k, v in results["sem_seg"].items()},
        }
    (root / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=worker, args=(rank, folder)) for rank in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=JOIN_TIMEOUT_S)
    for process in workers:  # one stuck in a collective would keep this script alive at exit
        if process.is_alive():
            process.kill()
            process.join()
    codes = [process.exitcode for process in workers]
    if codes != [0, 0]:
        sys.exit(f"workers exited with {codes}")
