"""The study: pretrain baselines, continue each with every arm and seed, compare, report.

Runs are separate processes (:mod:`sfm_d2.study.job`), ``plan.parallel`` at a time, each on one
core; a run whose ``study_run.json`` exists is not run again, so an interrupted study resumes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfm_d2.study.plan import Arm, Plan
from sfm_d2.study.spec import RESULT, SCORES, JobSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """One continuation: its arm, seeds, per-image statistics and ``study_run.json``."""

    arm: str
    base_seed: int
    continuation_seed: int
    scores: np.ndarray[Any, Any]  # [images, 2, 2, classes]
    record: dict[str, Any]


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


def run_jobs(jobs: Sequence[JobSpec], parallel: int) -> None:
    """Run every unfinished job, ``parallel`` at a time; raise with the log of any that fails."""
    pending = [job for job in jobs if not (Path(job.output_dir) / RESULT).is_file()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    running: list[tuple[JobSpec, subprocess.Popen[bytes], float]] = []
    failed: list[JobSpec] = []
    while pending or running:
        while pending and len(running) < parallel and not failed:
            job = pending.pop(0)
            folder = Path(job.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            spec = job.write(folder / "study_job.json")
            with open(folder / "log.txt", "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "sfm_d2.study.job", str(spec)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            running.append((job, process, time.perf_counter()))
            logger.info("study: started %s", job.name)
        time.sleep(0.5)
        for entry in list(running):
            job, process, started = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            seconds = time.perf_counter() - started
            if process.returncode != 0:
                failed.append(job)
                logger.error("study: %s failed after %.0f s", job.name, seconds)
            else:
                logger.info("study: %s done in %.0f s", job.name, seconds)
        if failed and not running:
            job = failed[0]
            raise RuntimeError(
                f"study run {job.name} failed; its log ({job.output_dir}/log.txt) ends with:\n"
                + _log_tail(Path(job.output_dir) / "log.txt")
            )


def _config(arm: Arm, configs: dict[str, Path]) -> str:
    if arm.config not in configs:
        raise ValueError(f"arm {arm.key} names config {arm.config!r}, not one of {list(configs)}")
    return str(configs[arm.config])


def pretrain_jobs(plan: Plan, output_dir: Path, baseline_config: Path) -> list[JobSpec]:
    return [
        JobSpec(
            name=f"pretrain base{seed}",
            config=str(baseline_config),
            opts=(
                *plan.common_opts(),
                "SEED",
                str(seed),
                "SOLVER.MAX_ITER",
                str(plan.pretrain_iters),
            ),
            output_dir=str(output_dir / "pretrain" / f"base{seed}"),
            analyse=False,
        )
        for seed in plan.base_seeds
    ]


def continuation_folder(output_dir: Path, arm: str, base: int, seed: int) -> Path:
    return output_dir / "runs" / f"base{base}" / f"seed{seed}" / arm


def continuation_jobs(plan: Plan, output_dir: Path, configs: dict[str, Path]) -> list[JobSpec]:
    """Every (base seed, continuation seed, arm), arms of one seed pair next to each other."""
    jobs = []
    for base in plan.base_seeds:
        weights = output_dir / "pretrain" / f"base{base}" / "model_final.pth"
        for seed in plan.continuation_seeds:
            for arm in plan.arms:
                jobs.append(
                    JobSpec(
                        name=f"{arm.key} base{base} seed{seed}",
                        config=_config(arm, configs),
                        opts=(
                            *plan.common_opts(),
                            *arm.opts,
                            "MODEL.WEIGHTS",
                            str(weights),
                            "SEED",
                            str(seed),
                            "SOLVER.MAX_ITER",
                            str(plan.continue_iters),
                        ),
                        output_dir=str(continuation_folder(output_dir, arm.key, base, seed)),
                        analyse=True,
                    )
                )
    return jobs


def collect(plan: Plan, output_dir: Path) -> list[RunResult]:
    """Every finished continuation's statistics and record."""
    results = []
    for base in plan.base_seeds:
        for seed in plan.continuation_seeds:
            for arm in plan.arms:
                folder = continuation_folder(output_dir, arm.key, base, seed)
                results.append(
                    RunResult(
                        arm.key,
                        base,
                        seed,
                        np.load(folder / SCORES),
                        json.loads((folder / RESULT).read_text()),
                    )
                )
    return results


def stacked_scores(plan: Plan, results: Sequence[RunResult], arm: str) -> np.ndarray[Any, Any]:
    """``[base seeds, continuation seeds, images, 2, 2, classes]`` of one arm, in plan order."""
    found = {(r.base_seed, r.continuation_seed): r.scores for r in results if r.arm == arm}
    return np.stack(
        [np.stack([found[(b, c)] for c in plan.continuation_seeds]) for b in plan.base_seeds]
    )


def run_study(
    output_dir: str | Path,
    plan: Plan,
    *,
    baseline_config: str | Path,
    sfm_config: str | Path,
    command: str = "",
) -> Path:
    """Train everything ``plan`` asks for (resuming finished runs), then write the report.

    Returns ``output_dir/study.md`` (``study.json`` and ``study_forest.png`` beside it).
    """
    from sfm_d2.study.report import write_study_report

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    configs = {"baseline": Path(baseline_config), "sfm": Path(sfm_config)}
    started = time.perf_counter()
    run_jobs(pretrain_jobs(plan, output_dir, configs["baseline"]), plan.parallel)
    run_jobs(continuation_jobs(plan, output_dir, configs), plan.parallel)
    results = collect(plan, output_dir)
    return write_study_report(
        output_dir,
        plan,
        results,
        seconds=time.perf_counter() - started,
        command=command,
        configs=configs,
    )
