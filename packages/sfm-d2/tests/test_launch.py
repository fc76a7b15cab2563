"""The CPU launcher: argument checks, thread shares, and a real 2-process gloo training run."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from sfm_d2.launch import free_local_url, launch, threads_per_worker

from . import processes

SCRIPT = Path(__file__).parent / "tiny_training.py"


def test_threads_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_worker(2, cores=16) == 8
    assert threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(4, cores=2) == 1


def test_threads_respect_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_worker(2, cores=16) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS must be a positive int, got 'many'"):
        threads_per_worker(2)


def test_threads_refuse_zero_workers() -> None:
    with pytest.raises(ValueError, match="num_workers must be a positive int"):
        threads_per_worker(0)


def test_free_local_url() -> None:
    url = free_local_url()
    assert url.startswith("tcp://127.0.0.1:")
    assert 0 < int(url.rsplit(":", 1)[1]) < 65536


def test_single_worker_runs_in_process() -> None:
    calls: list[tuple[int, str]] = []
    launch(lambda a, b: calls.append((a, b)), 1, args=(1, "x"), device="cpu")
    assert calls == [(1, "x")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_workers_per_machine": 0}, "num_workers_per_machine must be a positive int"),
        ({"num_workers_per_machine": 2, "num_machines": 0}, "num_machines must be a positive int"),
        ({"num_workers_per_machine": 2, "machine_rank": 1}, r"machine_rank must be in \[0, 1\)"),
        ({"num_workers_per_machine": 2, "device": "tpu"}, "device must be one of"),
        (
            {"num_workers_per_machine": 2, "num_machines": 2, "dist_url": "auto"},
            "dist_url must name the main machine",
        ),
    ],
)
def test_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    kwargs.setdefault("device", "cpu")
    with pytest.raises(ValueError, match=message):
        launch(print, **kwargs)  # type: ignore[arg-type]


@pytest.mark.slow
def test_two_process_cpu_training(tmp_path: Path) -> None:
    """DefaultTrainer + SemSegEvaluator on an SFM ResNet-18, 2 gloo workers, DDP, 6 iterations."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # The whole process group is killed afterwards: the 2 spawned workers too, on a timeout.
    # Limit for a loaded 2-core machine: 120-207 s measured there (the old limit was 300 s).
    run = processes.run([sys.executable, str(SCRIPT), str(tmp_path), "2"], env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, summary in enumerate(ranks):
        assert summary["rank"] == summary["local_rank"] == rank
        assert summary["world_size"] == summary["local_size"] == 2
        assert summary["ddp"] is True
        assert summary["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses
    assert all(math.isfinite(loss) for loss in losses)
    assert max(m["iteration"] for m in metrics if "total_loss" in m) == 5
    miou = [m["sem_seg/mIoU"] for m in metrics if "sem_seg/mIoU" in m]
    assert len(miou) == 1
    assert 0.0 <= miou[0] <= 100.0
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    checkpoint = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["iteration"] == 5
    ars = [k for k in checkpoint["model"] if k.startswith("backbone.ars.")]
    assert {k.split(".")[2] for k in ars} == {"res3", "res4", "res5"}
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
