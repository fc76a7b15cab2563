"""Benchmark: sfm_core's reference ``nonuniform_upsample`` against scipy, on CPU, in one run.

The authors demodulated with scipy (``Delaunay`` + ``LinearNDInterpolator``, per image, on CPU,
without gradients). This script times both on the same warped lattices, batch 4, and prints one
table: the median wall time and the median CPU time (process time, summed over threads) of each
over interleaved repeats after a warm-up, their ratios, the peak memory each needs, and how often
the two agree. On a shared machine the CPU-time ratio is the steadier of the two.

* Lattices: identity positions composed with a ``saliency_grid`` of smooth random logits
  (bilinearly upsampled 1/8-resolution noise times 3), as after one ARS; values ``z`` are
  standard normal, float32.
* scipy, per image: ``LinearNDInterpolator`` (its Delaunay triangulation included) on the lattice
  points in target pixel units, evaluated at every target pixel centre with ``fill_value=nan``;
  pixels outside the convex hull are then filled with the nearest lattice value (``cKDTree``),
  as ours are. Values go in as float64 (scipy computes in float64).
* torch: ``sfm_core.functional.nonuniform_upsample(..., method="triangles")`` under
  ``torch.no_grad()``, float32, with torch's default thread count. The triangle method is the
  like-for-like comparison with scipy's triangulation (the default ``"quads"`` interpolate
  bilinearly within lattice quads instead, 4 taps per pixel).
* Each timed call starts after a 0.25 s pause, so threads that the other library leaves spinning
  do not slow it down (right after a scipy call, torch ran at about half speed).
* Peak memory: each implementation runs once in a fresh subprocess that builds the inputs,
  returns freed heap to the OS (``malloc_trim``), resets the kernel's peak-RSS counter
  (``/proc/self/clear_refs``), runs the call, and reports ``VmHWM`` minus the RSS before the call:
  the extra resident memory the call needed at its peak, output included (Linux only).
* Agreement: the share of pixels where all K channels agree within 1e-4 (the two triangulate the
  cells differently where the lattice's shorter diagonal is not the Delaunay edge), and the
  largest absolute difference anywhere.

Run: ``nox -s bench`` or ``python benchmarks/bench_nonuniform_upsample.py`` (needs scipy).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy
import torch
import torch.nn.functional as F
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import cKDTree

import sfm_core
from sfm_core.functional import (
    compose_positions,
    identity_positions,
    nonuniform_upsample,
    saliency_grid,
)

BATCH = 4
# (lattice side, target side, K)
CASES = [(64, 256, 19), (64, 256, 256), (128, 512, 19), (128, 512, 256)]
AGREEMENT_TOLERANCE = 1e-4
# Pause before each timed call: worker threads left spinning by the previous call (seen after
# scipy's: torch ran at half speed for ~0.1 s) must not be billed to the next one.
SETTLE_S = 0.25
DEFAULT_OUT = Path(__file__).parent / "results" / "nonuniform_upsample_cpu.json"


def make_inputs(lattice: int, channels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Warped lattice positions ``[B, 2, h, h]`` and values ``[B, K, h, h]``, both float32."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(BATCH, 1, lattice // 8, lattice // 8, generator=generator)
    logits = F.interpolate(coarse, size=(lattice, lattice), mode="bilinear") * 3.0
    positions = compose_positions(
        identity_positions(BATCH, lattice, lattice), saliency_grid(logits)
    )
    values = torch.randn(BATCH, channels, lattice, lattice, generator=generator)
    return positions, values


def scipy_upsample(
    values: torch.Tensor, positions: torch.Tensor, target: int
) -> tuple[np.ndarray, int]:
    """The authors' way, per image; returns ``[B, K, Ho, Wo]`` float64 and #pixels outside hulls."""
    batch, channels = values.shape[:2]
    centres = np.arange(target, dtype=np.float64) + 0.5
    qx, qy = np.meshgrid(centres, centres)
    queries = np.stack([qx.ravel(), qy.ravel()], -1)
    out = np.empty((batch, channels, target, target))
    outside = 0
    for image in range(batch):
        points = positions[image].flatten(1).T.double().numpy() * target
        table = values[image].flatten(1).T.double().numpy()
        result = LinearNDInterpolator(points, table, fill_value=np.nan)(queries)
        missing = np.isnan(result[:, 0])
        if missing.any():
            _, nearest = cKDTree(points).query(queries[missing])
            result[missing] = table[nearest]
        outside += int(missing.sum())
        out[image] = result.T.reshape(channels, target, target)
    return out, outside


def torch_upsample(values: torch.Tensor, positions: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return nonuniform_upsample(values, positions, (target, target), method="triangles")


def measure_peak_memory(lattice: int, target: int, channels: int, implementation: str) -> int:
    """Run one call in this (fresh) process; return the peak extra resident bytes it needed."""
    positions, values = make_inputs(lattice, channels)
    run: Callable[[], object] = (
        (lambda: torch_upsample(values, positions, target))
        if implementation == "torch"
        else (lambda: scipy_upsample(values, positions, target))
    )
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    result = run()
    peak = _status_kib("VmHWM")
    del result
    return (peak - before) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory_in_subprocess(lattice: int, target: int, channels: int, implementation: str) -> int:
    command = [sys.executable, __file__, "--peak-memory", implementation]
    command += [str(lattice), str(target), str(channels)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return int(completed.stdout.strip().splitlines()[-1])


@dataclass
class CaseResult:
    """One row of the table (and of the JSON)."""

    lattice: int
    target: int
    channels: int
    scipy_ms: float
    torch_ms: float
    speedup: float
    scipy_cpu_ms: float
    torch_cpu_ms: float
    cpu_ratio: float
    scipy_times_s: list[float]
    torch_times_s: list[float]
    scipy_cpu_times_s: list[float]
    torch_cpu_times_s: list[float]
    agreeing_pixels: float
    max_abs_difference: float
    pixels_outside_hull: int
    pixels: int
    # what a dense (triangle x pixel) boolean test would need: the reference must stay far below
    dense_candidate_bytes: int
    scipy_peak_bytes: int = 0
    torch_peak_bytes: int = 0
    batch: int = BATCH


def time_case(lattice: int, target: int, channels: int, repeats: int) -> CaseResult:
    positions, values = make_inputs(lattice, channels)
    theirs, outside = scipy_upsample(values, positions, target)  # warm-up and reference
    ours = torch_upsample(values, positions, target)
    wall: dict[str, list[float]] = {"scipy": [], "torch": []}
    cpu: dict[str, list[float]] = {"scipy": [], "torch": []}
    runs: dict[str, Callable[[], object]] = {
        "scipy": lambda: scipy_upsample(values, positions, target),
        "torch": lambda: torch_upsample(values, positions, target),
    }
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        for name, run in runs.items():
            time.sleep(SETTLE_S)
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    difference = np.abs(ours.double().numpy() - theirs)
    scipy_ms, torch_ms = (statistics.median(wall[name]) * 1e3 for name in ("scipy", "torch"))
    scipy_cpu_ms, torch_cpu_ms = (statistics.median(cpu[name]) * 1e3 for name in ("scipy", "torch"))
    return CaseResult(
        lattice=lattice,
        target=target,
        channels=channels,
        scipy_ms=scipy_ms,
        torch_ms=torch_ms,
        speedup=scipy_ms / torch_ms,
        scipy_cpu_ms=scipy_cpu_ms,
        torch_cpu_ms=torch_cpu_ms,
        cpu_ratio=scipy_cpu_ms / torch_cpu_ms,
        scipy_times_s=wall["scipy"],
        torch_times_s=wall["torch"],
        scipy_cpu_times_s=cpu["scipy"],
        torch_cpu_times_s=cpu["torch"],
        agreeing_pixels=float((difference.max(axis=1) <= AGREEMENT_TOLERANCE).mean()),
        max_abs_difference=float(difference.max()),
        pixels_outside_hull=outside,
        pixels=BATCH * target * target,
        dense_candidate_bytes=BATCH * 2 * (lattice - 1) ** 2 * target * target,
    )


def environment() -> dict[str, object]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "sfm_core": sfm_core.__version__,
        "commit": _commit(),
    }


def _commit() -> str | None:
    """The repository's commit (``+dirty`` when the sfm-core sources differ from it), if known."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "packages/sfm-core/src", "benchmarks/*.py")
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")


def mib(count: float) -> str:
    return f"{count / 2**20:,.0f}"


def print_table(rows: list[CaseResult]) -> None:
    header = (
        f"{'lattice -> target':>18} {'K':>4} {'scipy ms':>9} {'torch ms':>9} {'speedup':>8} "
        f"{'scipy cpu':>9} {'torch cpu':>9} {'cpu ratio':>9} "
        f"{'scipy MiB':>9} {'torch MiB':>9} {'agree':>7} {'max |diff|':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        shape = f"{row.lattice}x{row.lattice} -> {row.target}x{row.target}"
        print(
            f"{shape:>18} {row.channels:>4} {row.scipy_ms:>9.0f} {row.torch_ms:>9.0f} "
            f"{row.speedup:>7.1f}x {row.scipy_cpu_ms:>9.0f} {row.torch_cpu_ms:>9.0f} "
            f"{row.cpu_ratio:>8.1f}x {mib(row.scipy_peak_bytes):>9} {mib(row.torch_peak_bytes):>9} "
            f"{row.agreeing_pixels:>7.2%} {row.max_abs_difference:>10.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after a warm-up")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument(
        "--peak-memory", nargs=4, metavar=("IMPL", "LATTICE", "TARGET", "K"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.peak_memory:
        implementation, *sizes = args.peak_memory
        print(measure_peak_memory(*map(int, sizes), implementation))
        return
    rows = []
    for lattice, target, channels in CASES:
        row = time_case(lattice, target, channels, args.repeats)
        row.scipy_peak_bytes = peak_memory_in_subprocess(lattice, target, channels, "scipy")
        row.torch_peak_bytes = peak_memory_in_subprocess(lattice, target, channels, "torch")
        rows.append(row)
        print(f"done {lattice} -> {target}, K={channels}", file=sys.stderr, flush=True)
    info = environment()
    print(
        f"nonuniform_upsample vs scipy LinearNDInterpolator, batch {BATCH}, CPU: {info['cpu']} "
        f"({info['cpu_count']} cores, torch threads {info['torch_threads']}), "
        f"median of {args.repeats}"
    )
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": info, "repeats": args.repeats, "cases": [asdict(r) for r in rows]}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
