"""SIGKILL train_net at random moments, resume with --resume, end bit-identical to an unkilled run.

Settings: the SFM quick schedule (ARS + every Mask2Former switch, 8 iterations, a checkpoint every
2), SEED 0, one process, DATALOADER.NUM_WORKERS 0, OMP_NUM_THREADS 1 (single-threaded CPU
kernels are deterministic, so torch.use_deterministic_algorithms is not needed on CPU). One chain
of runs is killed three times: twice at a seeded random moment after training started, once while
a checkpoint's temporary file is written (``SFM_CHECKPOINT_WRITE_PAUSE_S`` holds the writer
between the complete temporary file and its rename). The last resume runs to the end. The final
weights, the AdamW state and the evaluation must equal the unkilled run's exactly (tolerance 0).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from PIL import Image

from sfm_d2.data.config_datasets import QUICK_FINEDETAIL_NAMES
from sfm_d2.engine.checkpointer import PAUSE_ENV, TEMP_PREFIX
from sfm_d2.engine.resumable import (
    RecordOrientation,
    ResumableTrainerMixin,
    ResumableTrainingSampler,
    grouped_batches,
)

from .processes import kill_group
from .processes import start as start_process

REPO = Path(__file__).resolve().parents[3]
PROJECT = REPO / "projects" / "SFM-Mask2Former"
TRAIN_NET = PROJECT / "train_net.py"
CONFIG = (
    PROJECT
    / "configs"
    / "quick_schedules"
    / "sfm_maskformer2_swin_micro_finedetail_instant_test.yaml"
)
OVERRIDES = ("SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "0")
EVALUATION = Path("inference") / QUICK_FINEDETAIL_NAMES["val"] / "sem_seg_evaluation.json"
STARTED = "Starting training from iteration"
SAVING = "Saving checkpoint to"
TIMEOUT_S = 600
# Seeds of the kill moments; CI runs one chain (about 5 train_net starts), more with e.g.
# SFM_KILL_SEEDS=11,12,13.
KILL_SEEDS = [int(seed) for seed in os.environ.get("SFM_KILL_SEEDS", "11").split(",")]


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every train_net this test starts; each is killed and waited for at the end, pass or fail."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        kill_group(process)


def start(
    children: list[subprocess.Popen[bytes]], output_dir: Path, env: dict[str, str], *flags: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(TRAIN_NET), "--config-file", str(CONFIG), *flags]
    command += [*OVERRIDES, "OUTPUT_DIR", str(output_dir)]
    with open(output_dir.parent / f"{output_dir.name}.console.log", "ab") as log:
        children.append(start_process(command, env=env, output=log))
    return children[-1]


def wait_for(condition: Any, process: subprocess.Popen[bytes]) -> bool:
    """Poll ``condition()`` every 5 ms; False if the process ended first."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("train_net neither reached the kill point nor ended")


def log_count(output_dir: Path, text: str) -> int:
    """How often ``text`` appears in the chain's console log (every run appends to it)."""
    log = output_dir.parent / f"{output_dir.name}.console.log"
    return log.read_text(errors="replace").count(text) if log.exists() else 0


def temporary_checkpoint(output_dir: Path) -> bool:
    return output_dir.exists() and any(
        name.startswith(TEMP_PREFIX + "model_") for name in os.listdir(output_dir)
    )


def kill(process: subprocess.Popen[bytes]) -> bool:
    """SIGKILL; True if it was still running (a real kill), False if it had already finished."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


def finish(process: subprocess.Popen[bytes]) -> None:
    assert process.wait(TIMEOUT_S) == 0, f"train_net failed with code {process.returncode}"


def final_state(output_dir: Path) -> dict[str, Any]:
    checkpoint = torch.load(output_dir / "model_final.pth", weights_only=True)
    evaluation = json.loads((output_dir / EVALUATION).read_text())
    return {"checkpoint": checkpoint, "evaluation": evaluation}


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"  # NaN == NaN here


@pytest.mark.slow
@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_killed_and_resumed_runs_end_identical_to_an_unkilled_run(
    seed: int, tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    env = {**os.environ, "SFM_DATA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    # Generate the quick dataset once, so no two processes race to create it.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from sfm_d2.data.config_datasets import QUICK_FINEDETAIL;QUICK_FINEDETAIL.load('train')",
        ],
        env=env,
        check=True,
    )
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    reference = start(children, reference_dir, env)  # runs alongside the chain below
    rng = random.Random(seed)
    kills = 0

    # Kill 1: a random moment after the first checkpoint (so the resume has one to use).
    saved = log_count(killed_dir, SAVING)
    first = start(children, killed_dir, env)
    wait_for(lambda: log_count(killed_dir, SAVING) > saved, first)
    time.sleep(rng.uniform(0.0, 1.0))
    kills += kill(first)

    # Kill 2: inside a checkpoint write (the temporary file exists, the rename has not happened).
    paused = start(children, killed_dir, {**env, PAUSE_ENV: "3"}, "--resume")
    in_write = wait_for(lambda: temporary_checkpoint(killed_dir), paused)
    killed_in_write = kill(paused)
    kills += killed_in_write

    # Kill 3: a random moment after training restarted.
    started = log_count(killed_dir, STARTED)
    third = start(children, killed_dir, env, "--resume")
    wait_for(lambda: log_count(killed_dir, STARTED) > started, third)
    time.sleep(rng.uniform(0.0, 3.0))
    kills += kill(third)

    finish(start(children, killed_dir, env, "--resume"))
    finish(reference)
    assert in_write, "the paused run ended without writing a checkpoint"
    assert killed_in_write, "the kill during a checkpoint write did not happen"
    assert kills >= 2, f"only {kills} of 3 kills landed before the run ended"
    assert not temporary_checkpoint(killed_dir)
    assert_identical(final_state(killed_dir), final_state(reference_dir))
    print(f"kills survived: {kills} (one during a checkpoint write)")


# ---- the pieces, without training -------------------------------------------------------------


def draws(sampler: ResumableTrainingSampler, count: int) -> list[tuple[int, float]]:
    """(index, the first random number a mapper would draw for it) for ``count`` samples."""
    stream = iter(sampler)
    return [(next(stream), float(np.random.rand())) for _ in range(count)]


def test_the_stream_resumes_at_its_position_with_the_same_randomness() -> None:
    whole = draws(ResumableTrainingSampler(5, seed=3), 12)
    assert sorted(i for i, _ in whole[:5]) == list(range(5))  # a permutation per epoch
    assert draws(ResumableTrainingSampler(5, seed=3, start=7), 5) == whole[7:]


def test_two_ranks_split_the_one_rank_stream() -> None:
    whole = draws(ResumableTrainingSampler(5, seed=3), 12)
    shards = []
    for rank in (0, 1):
        sampler = ResumableTrainingSampler(5, seed=3, start=2)
        sampler._rank, sampler._world_size = rank, 2  # as detectron2's comm would set them
        shards.append(draws(sampler, 5))
    assert shards[0] == whole[2::2]
    assert shards[1] == whole[3::2]


def test_sampler_refuses_a_bad_start() -> None:
    with pytest.raises(ValueError, match="start must be a non-negative int, got -1"):
        ResumableTrainingSampler(5, seed=0, start=-1)


def test_grouping_fills_buckets_in_stream_order_and_skips_whole_batches() -> None:
    items = list(enumerate([0, 1, 1, 0, 1, 0, 0, 1, 1, 1]))  # (position, index = its group)
    batches = list(grouped_batches(iter(items), lambda index: index, 2))
    assert batches == [[(1, 1), (2, 1)], [(0, 0), (3, 0)], [(5, 0), (6, 0)], [(4, 1), (7, 1)],
                       [(8, 1), (9, 1)]]  # fmt: skip
    assert list(grouped_batches(iter(items), lambda index: index, 2, skip=3)) == batches[3:]


def test_orientation_comes_from_the_record_else_from_the_image(tmp_path: Path) -> None:
    Image.new("RGB", (5, 9)).save(tmp_path / "portrait.png")
    records = [
        {"file_name": "unused.png", "width": 9, "height": 5},
        {"file_name": "unused.png", "width": 5, "height": 5},
        {"file_name": str(tmp_path / "portrait.png")},  # no size: read from the header
    ]
    orientation = RecordOrientation(records)
    assert [orientation(i) for i in range(3)] == [0, 1, 1]  # detectron2: 0 iff width > height


def loader_batches(
    start_iter: int, count: int, *, grouping: bool, workers: int
) -> list[list[tuple[int, float]]]:
    """``count`` batches of the real resumable loader from ``start_iter``: (record id, the first
    random number the mapper draws for it). Landscape records have even ids, portrait odd."""
    name = "sfm_d2_test_resume_stream"
    sizes = [(9, 5), (5, 9), (5, 9), (5, 9), (9, 5), (5, 9), (9, 5), (5, 9), (5, 9), (9, 5)]
    records = [
        {"file_name": f"{i}.png", "image_id": i, "width": w, "height": h}
        for i, (w, h) in enumerate(sizes)
    ]
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.SOLVER.IMS_PER_BATCH = 3
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    cfg.SEED = 4
    DatasetCatalog.register(name, lambda: records)
    try:
        loader = ResumableTrainerMixin.resumable_loader(
            cfg, lambda r: {**r, "draw": float(np.random.rand())}, start_iter
        )
        stream = iter(loader)
        batches = [[(r["image_id"], r["draw"]) for r in next(stream)] for _ in range(count)]
        del stream, loader  # ends the loader's worker processes
    finally:
        DatasetCatalog.remove(name)
    if grouping:  # every batch is one orientation
        assert all(len({sizes[i][0] > sizes[i][1] for i, _ in b}) == 1 for b in batches)
    return batches


@pytest.mark.parametrize("grouping", [True, False])
def test_the_loader_resumes_at_any_iteration_with_any_number_of_workers(grouping: bool) -> None:
    whole = loader_batches(0, 9, grouping=grouping, workers=0)
    assert whole != loader_batches(0, 9, grouping=not grouping, workers=0)  # grouping regroups
    assert loader_batches(0, 9, grouping=grouping, workers=2) == whole
    for start_iter in (1, 4):
        for workers in (0, 2):
            resumed = loader_batches(start_iter, 9 - start_iter, grouping=grouping, workers=workers)
            assert resumed == whole[start_iter:], (start_iter, workers)
