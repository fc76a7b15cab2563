"""Benchmark: what ARS costs inside real backbones on CPU, forward + backward, in one run.

For each timm model (random weights, training mode, batch 2, 224x224, float32) the script wraps a
copy with ``insert_ars(model, "auto")``: one ARS before each of the three stride-2 stage
transitions after the stem (METHOD.md §4), the default "avg-lhpf-psp" generator. The wrapped
model runs twice per round: on the reference ops (``SFM_BACKEND=reference``) and on the default
backend, which for CPU tensors is sfm-core's ``cpu`` backend (``sfm_core.cpu``: numba kernels
when installed). It prints one table: the median time of a training step (forward, ``sum()`` of
the output, backward) of the plain model and of both wrapped runs over interleaved repeats, the
time overheads, the FLOP overhead, and the quotient of the fast path's time and FLOP overheads:
how many times more time ARS takes than its FLOP share predicts. A second table times each ARS
module alone (forward + backward on the input it gets in the model), reference vs fast.

* FLOPs: ``FlopCounterMode`` over the forward pass (sfm-core registers ``grid_sample``'s
  formula). The backward is left out because torch's ``convolution_backward`` formula ignores
  ``groups``: it counts a depthwise convolution's backward ``C`` times over (it made ARS look like
  +47 % FLOPs on resnet50). With backward ≈ 2 × forward for both models, the forward share is
  the forward + backward share.

* Timing: one warm-up step each, then ``--repeats`` rounds, each timing the plain model and the
  wrapped one back to back (the order alternates per round), so drifts in machine load hit both.
  The CPU time of the timing thread (``time.thread_time``) is the primary clock: on a shared
  machine it leaves out the time other processes hold the core. With ``--threads 1`` (default)
  it is the whole step's CPU time; the wall-clock medians are reported too.
* Overheads are ratios of medians: ``wrapped / plain - 1``.
* Gradients are set to ``None`` before each step, as ``optimizer.zero_grad()`` does.

Run: ``nox -s bench-ars`` or ``python benchmarks/bench_ars_overhead.py`` (needs timm).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import sfm_core
from sfm_core.backends import BACKEND_ENV
from sfm_core.insertion import insert_ars
from sfm_core.nn import AdaptiveResampling

MODELS = ("resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224")
BATCH = 2
SIZE = 224
DEFAULT_OUT = Path(__file__).parent / "results" / "ars_overhead_cpu.json"


@dataclass
class ModelResult:
    """One row of the table (and of the JSON)."""

    model: str
    sites: list[str]
    plain_cpu_ms: float
    ars_cpu_ms: float
    ars_reference_cpu_ms: float
    plain_wall_ms: float
    ars_wall_ms: float
    time_overhead: float  # CPU-time medians: ars / plain - 1
    reference_time_overhead: float  # the same with the reference ops
    wall_overhead: float
    flop_overhead: float  # forward FLOPs: ars / plain - 1
    times_flop_share: float  # time_overhead / flop_overhead
    plain_cpu_ms_all: list[float]
    ars_cpu_ms_all: list[float]
    sites_ms: dict[str, tuple[float, float]]  # ARS module alone: (reference, fast) CPU ms


@contextmanager
def backend(name: str | None) -> Iterator[None]:
    """``SFM_BACKEND`` set to ``name`` (``None``: unset, the default choice) for the block."""
    saved = os.environ.pop(BACKEND_ENV, None)
    if name is not None:
        os.environ[BACKEND_ENV] = name
    try:
        yield
    finally:
        os.environ.pop(BACKEND_ENV, None)
        if saved is not None:
            os.environ[BACKEND_ENV] = saved


def under(name: str | None, step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with backend(name):
            step()

    return run


def site_inputs(wrapped: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Each ARS module of ``wrapped`` with the input it receives on ``x``."""
    found: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def record(name: str, module: nn.Module, x: torch.Tensor) -> None:
        found.setdefault(name, (module, x.detach()))  # returns None: the output stays

    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: record(name, m, args[0]))
        for name, module in wrapped.named_modules()
        if isinstance(module, AdaptiveResampling)
    ]
    with torch.no_grad():
        wrapped(x)
    for hook in hooks:
        hook.remove()
    return found


def module_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    leaf = x.clone().requires_grad_()

    def step() -> None:
        module.zero_grad(set_to_none=True)
        leaf.grad = None
        module(leaf).features.sum().backward()

    return step


def training_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A closure running forward, ``sum()`` of the output and backward, from fresh gradients."""

    def step() -> None:
        for parameter in model.parameters():
            parameter.grad = None
        model(x).sum().backward()

    return step


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def time_interleaved(
    steps: dict[str, Callable[[], None]], repeats: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Per name: (CPU ms, wall ms) of every repeat; the order alternates from round to round."""
    names = list(steps)
    for name in names:
        steps[name]()  # warm-up: allocator, oneDNN primitives
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            cpu, wall = time.thread_time(), time.perf_counter()
            steps[name]()
            times[name][0].append((time.thread_time() - cpu) * 1e3)
            times[name][1].append((time.perf_counter() - wall) * 1e3)
    return times


def measure(name: str, repeats: int) -> ModelResult:
    torch.manual_seed(0)
    plain = timm.create_model(name, pretrained=False).train()
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    wrapped = insert_ars(copy.deepcopy(plain), "auto", example_input=x).train()
    steps = {
        "plain": training_step(plain, x),
        "ars": under(None, training_step(wrapped, x)),
        "ars-reference": under("reference", training_step(wrapped, x)),
    }
    flops = {"plain": forward_flops(plain, x), "ars": forward_flops(wrapped, x)}
    times = time_interleaved(steps, repeats)
    cpu = {key: statistics.median(value[0]) for key, value in times.items()}
    wall = {key: statistics.median(value[1]) for key, value in times.items()}
    time_overhead = cpu["ars"] / cpu["plain"] - 1
    flop_overhead = flops["ars"] / flops["plain"] - 1
    sites_ms = {}
    for site, (module, site_x) in site_inputs(wrapped, x).items():
        step = module_step(module, site_x)
        site_times = time_interleaved(
            {"reference": under("reference", step), "fast": under(None, step)}, repeats
        )
        sites_ms[f"{site} {list(site_x.shape)}"] = (
            statistics.median(site_times["reference"][0]),
            statistics.median(site_times["fast"][0]),
        )
    return ModelResult(
        model=name,
        sites=list(wrapped.site_names),
        plain_cpu_ms=cpu["plain"],
        ars_cpu_ms=cpu["ars"],
        ars_reference_cpu_ms=cpu["ars-reference"],
        plain_wall_ms=wall["plain"],
        ars_wall_ms=wall["ars"],
        time_overhead=time_overhead,
        reference_time_overhead=cpu["ars-reference"] / cpu["plain"] - 1,
        wall_overhead=wall["ars"] / wall["plain"] - 1,
        flop_overhead=flop_overhead,
        times_flop_share=time_overhead / flop_overhead,
        plain_cpu_ms_all=times["plain"][0],
        ars_cpu_ms_all=times["ars"][0],
        sites_ms=sites_ms,
    )


def table(results: list[ModelResult]) -> str:
    header = (
        f"{'model':<30} {'plain ms':>9} {'+ARS ref':>9} {'+ARS fast':>9} {'time + ref':>10} "
        f"{'time + fast':>11} {'wall + fast':>11} {'FLOPs +':>8} {'x FLOP share':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.model:<30} {r.plain_cpu_ms:>9.0f} {r.ars_reference_cpu_ms:>9.0f} "
            f"{r.ars_cpu_ms:>9.0f} {100 * r.reference_time_overhead:>9.1f}% "
            f"{100 * r.time_overhead:>10.1f}% {100 * r.wall_overhead:>10.1f}% "
            f"{100 * r.flop_overhead:>7.2f}% {r.times_flop_share:>12.1f}"
        )
    return "\n".join(lines)


def sites_table(results: list[ModelResult]) -> str:
    header = f"{'ARS module alone (fwd + bwd)':<60} {'ref ms':>8} {'fast ms':>8} {'speed-up':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        for site, (slow, fast) in r.sites_ms.items():
            lines.append(
                f"{r.model + ' ' + site:<60} {slow:>8.1f} {fast:>8.1f} {slow / fast:>7.2f}x"
            )
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(name, args.repeats) for name in args.models]
    print(
        f"ARS overhead, CPU, batch {BATCH}, {SIZE}x{SIZE}, forward + backward, "
        f"{args.threads} thread(s), median of {args.repeats} interleaved repeats (CPU time)"
    )
    print(table(results))
    print(sites_table(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "sfm_core": sfm_core.__version__,
        "batch": BATCH,
        "size": SIZE,
        "repeats": args.repeats,
        "results": [asdict(r) for r in results],
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
