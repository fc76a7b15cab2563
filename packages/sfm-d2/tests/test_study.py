"""The study's machinery at a tiny size: pretrain, paired continuations, report, resume.

Two base seeds x one continuation seed x two arms (baseline, full SFM), two
iterations each on the quick 64-px copy of the dataset (the instant-test configs): seconds of
training, the rest is process start-up. The numbers mean nothing; the files and their
consistency are checked.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from sfm_d2.data.finedetail import CLASSES
from sfm_d2.demo import parse_table
from sfm_d2.study import ARMS, Plan, run_study
from sfm_d2.study.scores import metric_functions

QUICK = Path(__file__).resolve().parents[3] / "projects/SFM-Mask2Former/configs/quick_schedules"
BASELINE = QUICK / "maskformer2_swin_micro_finedetail_instant_test.yaml"
SFM = QUICK / "sfm_maskformer2_swin_micro_finedetail_instant_test.yaml"
PLAN = Plan(
    base_seeds=(0, 1),
    continuation_seeds=(7,),
    pretrain_iters=2,
    continue_iters=2,
    batch_size=2,
    train_dataset="sfm_finedetail_quick_train",
    test_dataset="sfm_finedetail_quick_val",
    arms=tuple(arm for arm in ARMS if arm.key in ("B", "S")),
    replicates=200,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("sfm_cache")
    os.environ["SFM_DATA_CACHE"] = str(cache)  # inherited by the study's processes
    output = tmp_path_factory.mktemp("study")
    try:
        return run_study(output, PLAN, baseline_config=BASELINE, sfm_config=SFM)
    finally:
        del os.environ["SFM_DATA_CACHE"]


def test_report_files_and_table(study: Path) -> None:
    folder = study.parent
    assert (folder / "study_forest.png").stat().st_size > 0
    table = parse_table(study.read_text())
    assert list(table) == ["full SFM"]
    for cells in table.values():
        assert list(cells) == ["boundary IoU", "thin-class IoU", "mIoU"]
        for cell in cells.values():
            estimate, low, high = (
                float(v)
                for v in cell.rstrip(" *")
                .replace("[", "")
                .replace("]", "")
                .replace(",", "")
                .split()
            )
            assert low <= estimate <= high or math.isnan(estimate)


def test_json_holds_every_run_with_its_aliasing_controls(study: Path) -> None:
    data = json.loads((study.parent / "study.json").read_text())
    runs = data["runs"]
    assert sorted((r["arm"], r["base_seed"]) for r in runs) == sorted(
        (arm, base) for arm in ("B", "S") for base in (0, 1)
    )
    for run in runs:
        controls = set(run["aliasing"])
        assert controls == ({"own", "other", "shift", "identity"} if run["arm"] == "S" else {"own"})
        assert run["iterations"] == 2
    assert set(data["differences"]) == {"S"}
    assert set(data["ars_diagnostics"]) == {"S"}
    assert set(data["ars_diagnostics"]["S"]) == {"res3", "res4", "res5"}


def test_per_image_statistics_sum_to_the_evaluator_s_scores(study: Path) -> None:
    metrics = metric_functions(CLASSES)
    for scores in (study.parent / "runs").rglob("study_scores.npy"):
        record = json.loads((scores.parent / "study_run.json").read_text())
        summed = np.load(scores).sum(axis=0)
        assert float(metrics["mIoU"](summed)) == pytest.approx(record["metrics"]["mIoU"], abs=1e-6)
        assert float(metrics["boundary IoU"](summed)) == pytest.approx(
            record["metrics"]["BoundaryIoU"], abs=1e-6
        )


def test_continuations_start_from_the_shared_checkpoint(study: Path) -> None:
    for arm in ("B", "S"):
        spec = json.loads(
            (study.parent / "runs" / "base1" / "seed7" / arm / "study_job.json").read_text()
        )
        opts = spec["opts"]
        assert opts[opts.index("MODEL.WEIGHTS") + 1].endswith("pretrain/base1/model_final.pth")
        assert opts[opts.index("SEED") + 1] == "7"


def test_a_second_call_resumes_without_training(study: Path) -> None:
    finished = sorted(study.parent.rglob("study_run.json"))
    stamps = [path.stat().st_mtime_ns for path in finished]
    run_study(study.parent, PLAN, baseline_config=BASELINE, sfm_config=SFM)
    assert [path.stat().st_mtime_ns for path in finished] == stamps


def test_bad_plans_are_named() -> None:
    with pytest.raises(ValueError, match="base_seeds must be distinct"):
        Plan(base_seeds=(1, 1))
    with pytest.raises(ValueError, match="continue_iters must be a positive int"):
        Plan(continue_iters=0)
    with pytest.raises(ValueError, match="arms must start with the baseline"):
        Plan(arms=ARMS[1:])
