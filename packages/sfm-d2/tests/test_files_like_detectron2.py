"""Files a detectron2 user expects: checkpoint modes as the umask gives them (detectron2: plain
``open``) and the evaluation files of detectron2's ``SemSegEvaluator``, beside SFM's extras."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image
from torch import nn

from sfm_d2.data import register_semantic_dataset
from sfm_d2.engine.checkpointer import SFMCheckpointer
from sfm_d2.evaluation import SFMSemSegEvaluator

# Keys of the boundary IoU that detectron2 main (not 0.6) adds to SemSegEvaluator's results.
DETECTRON2_MAIN_BOUNDARY = ("BoundaryIoU", "min(IoU, B-Iou)")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_files_get_the_mode_the_umask_gives(umask: int, tmp_path: Path) -> None:
    """0666 less the umask (0644 under the usual 022), not mkstemp's 0600."""
    previous = os.umask(umask)
    try:
        SFMCheckpointer(nn.Linear(2, 2), save_dir=str(tmp_path)).save("model_0000000")
    finally:
        os.umask(previous)
    names = ["model_0000000.pth", "model_0000000.pth.sha256", "last_checkpoint"]
    assert sorted(os.listdir(tmp_path)) == sorted(names)  # no temporary file left
    for name in names:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def _labelled_folder(root: Path, count: int = 3) -> None:
    """``count`` 6x7 images with label PNGs (classes 0..2, a few ignored pixels)."""
    rng = np.random.default_rng(3)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        label = rng.integers(0, 3, (6, 7)).astype(np.uint8)
        label[0, :2] = 255
        Image.fromarray(label).save(root / "labels" / f"{index}.png")
        image = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{index}.png")


@pytest.mark.parametrize("dataset_ids", [None, {10: 0, 20: 1, 30: 2}])
def test_evaluator_writes_detectron2s_files_and_its_own(
    dataset_ids: dict[int, int] | None, tmp_path: Path
) -> None:
    """The same predictions through SFMSemSegEvaluator and detectron2's SemSegEvaluator: equal
    ``sem_seg_predictions.json``, and every result detectron2 stores in ``sem_seg_evaluation.pth``
    (where defined) is in ours with the same value; ours also keeps its JSON with the extras."""
    _labelled_folder(tmp_path / "data")
    name = f"sfm_test_d2_files_{0 if dataset_ids is None else 1}"
    register_semantic_dataset(
        name,
        tmp_path / "data" / "images",
        tmp_path / "data" / "labels",
        ["a", "b", "c"],
        image_ext=".png",
        replace=True,
    )
    if dataset_ids is not None:
        MetadataCatalog.get(name).set(stuff_dataset_id_to_contiguous_id=dataset_ids)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    evaluators = [
        SFMSemSegEvaluator(name, distributed=False, output_dir=str(ours)),
        SemSegEvaluator(name, distributed=False, output_dir=str(theirs)),
    ]
    rng = np.random.default_rng(4)
    inputs, outputs = [], []
    for record in DatasetCatalog.get(name):
        pred = torch.from_numpy(rng.integers(0, 2, (6, 7)))  # class 2 is never predicted
        inputs.append({"file_name": record["file_name"]})
        outputs.append({"sem_seg": torch.nn.functional.one_hot(pred, 3).permute(2, 0, 1).float()})
    for evaluator in evaluators:
        evaluator.reset()
        evaluator.process(inputs, outputs)
        evaluator.evaluate()
    predictions = json.loads((ours / "sem_seg_predictions.json").read_text())
    assert predictions == json.loads((theirs / "sem_seg_predictions.json").read_text())
    assert len(predictions) == 6  # two predicted classes per image
    if dataset_ids is not None:
        assert {p["category_id"] for p in predictions} == {10, 20}
    ours_pth = torch.load(ours / "sem_seg_evaluation.pth", weights_only=True)
    theirs_pth = torch.load(theirs / "sem_seg_evaluation.pth", weights_only=False)
    # detectron2 main (not 0.6) adds a boundary IoU of its own (band = 2 % of the image diagonal,
    # and min(IoU, boundary IoU)); ours has a band width in pixels: only region metrics compare.
    region = {k: v for k, v in theirs_pth.items() if not k.startswith(DETECTRON2_MAIN_BOUNDARY)}
    assert set(region) < set(ours_pth)  # ours adds boundary IoU
    for key, value in region.items():
        if math.isfinite(value):
            assert ours_pth[key] == pytest.approx(float(value), rel=1e-9), key
    saved = json.loads((ours / "sem_seg_evaluation.json").read_text())
    assert saved["sem_seg"]["mIoU"] == pytest.approx(ours_pth["mIoU"])
    assert "BoundaryIoU" in saved["sem_seg"]
