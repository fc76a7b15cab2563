"""GPU benchmark: SFM Mask2Former training iteration and inference, every switch, one process.

Cases: backbone (R50, Swin-T; the ADE20K yamls of projects/SFM-Mask2Former, 150 classes) × dtype
(fp32, bf16 under ``torch.autocast``) × ``MODEL.SFM.BACKEND`` (triton, reference) × variant
(``plain`` = the baseline yaml, i.e. Mask2Former; ``sfm`` = the sfm_ yaml, which differs only in
``MODEL.SFM``). Random init (no weights), the synthetic ADE20K-shaped batch of
bench_mask2former.py (512² crops, 10 classes of rectangles per image), same seed for every case.

* training iteration: forward (losses, criterion included) + backward + AdamW step;
* inference: ``model.eval()`` under ``torch.no_grad()``, semantic output at the input size;
* time: median over ``--reps`` CUDA-event-timed repeats after ``--warmup`` (Triton autotunes in
  the warm-up); the events enclose the host's work too (Hungarian matching on the CPU);
* memory: ``torch.cuda.max_memory_allocated`` over one more repeat (weights, AdamW state and
  batch included), and that peak minus what was allocated right before it.
If a case runs out of memory it is retried at half the batch (the row says which batch ran).

Derived (``summary``), ratios of this run: SFM overhead (sfm / plain − 1, time and peak memory)
per backbone, dtype and backend; the Triton backend's speed-up on the whole step
(reference / triton) and on SFM's share of it, ``(ref sfm − ref plain) / (triton sfm − triton
plain)`` (the ARS convolutions and other dense layers in that share are the same for both).

Writes ``bench_mask2former_gpu-<device>-<date>.json`` to ``--out`` after every case (a killed run
keeps what it measured), and prints one Markdown table. ``--deadline S`` starts no case after S
seconds. ``--dry-run``: CPU under ``TRITON_INTERPRET=1``, 64² batch 2, a shrunken decoder, one
repeat: the same code paths, meaningless timings (CI runs it through tools/gpu_check.py).

Run on the GPU machine: ``python packages/sfm-d2/benchmarks/bench_mask2former_gpu.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import sfm_d2  # before detectron2: its compat layer must run first

# isort: split
from detectron2.modeling import build_model
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_mask2former import make_batch  # the CPU benchmark's synthetic batch

CONFIGS = Path(__file__).resolve().parents[3] / "projects" / "SFM-Mask2Former" / "configs"
MODELS = {
    "R50": "ade20k/{}maskformer2_R50_bs16_160k.yaml",
    "Swin-T": "ade20k/swin/{}maskformer2_swin_tiny_bs16_160k.yaml",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BACKENDS = ("triton", "reference")
VARIANTS = ("plain", "sfm")
# --dry-run: every part of the model still runs, with fewer layers, queries and points.
DRY_RUN_OPTS = [
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1,
    "MODEL.MASK_FORMER.DEC_LAYERS", 2,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 8,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256,
]  # fmt: skip


def build(model: str, variant: str, backend: str, device: str, extra: list[Any]) -> nn.Module:
    yaml = CONFIGS / MODELS[model].format("sfm_" if variant == "sfm" else "")
    opts = ["MODEL.DEVICE", device, "MODEL.SFM.BACKEND", backend, "MODEL.WEIGHTS", "", *extra]
    torch.manual_seed(0)
    return build_model(sfm_d2.load_config(yaml, opts))


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median of ``reps`` timed calls after ``warmup``: CUDA events on a GPU, else wall clock."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Peak allocated MiB over one call, and that peak minus what was allocated before (0 on CPU)."""
    if device.type != "cuda":
        return 0.0, 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return peak / 2**20, (peak - before) / 2**20


def measure(
    model: nn.Module, batch: list[dict[str, Any]], device: torch.device, dtype: torch.dtype,
    warmup: int, reps: int,
) -> dict[str, float]:  # fmt: skip
    """Training iteration and inference of one built model, time and memory."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    infer_batch = [{"image": d["image"], "height": d["image"].shape[-2],
                    "width": d["image"].shape[-1]} for d in batch]  # fmt: skip

    def train_step() -> None:
        with autocast(device, dtype):
            losses = model(batch)
            loss = torch.stack([v.float() for v in losses.values()]).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer() -> None:
        with torch.no_grad(), autocast(device, dtype):
            model(infer_batch)

    model.train()
    train_ms = median_ms(train_step, device, warmup, reps)
    train_peak, train_extra = peak_mib(train_step, device)
    model.eval()
    infer_ms = median_ms(infer, device, warmup, reps)
    infer_peak, infer_extra = peak_mib(infer, device)
    return {
        "train_ms": train_ms, "train_peak_mib": train_peak, "train_extra_mib": train_extra,
        "infer_ms": infer_ms, "infer_peak_mib": infer_peak, "infer_extra_mib": infer_extra,
    }  # fmt: skip


def run_case(
    case: dict[str, Any], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """One row: measured at ``--batch``, or at half of it after an out-of-memory error, etc."""
    extra = DRY_RUN_OPTS if args.dry_run else []
    batch_size = args.batch
    while True:
        model = None
        try:
            model = build(case["model"], case["variant"], case["backend"], device.type, extra)
            params = sum(p.numel() for p in model.parameters())
            batch = make_batch(batch_size, args.size)
            row = measure(model, batch, device, DTYPES[case["dtype"]], args.warmup, args.reps)
            return {**case, "batch": batch_size, "params_m": params / 1e6, **row}
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
        finally:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFM overhead per (model, dtype, backend); Triton speed-ups per (model, dtype)."""
    got = {(r["model"], r["dtype"], r["backend"], r["variant"]): r for r in rows if "train_ms" in r}
    out = []
    for model in MODELS:
        for dtype in DTYPES:
            entry: dict[str, Any] = {"model": model, "dtype": dtype}
            for backend in BACKENDS:
                plain, sfm = (
                    got.get((model, dtype, backend, "plain")),
                    got.get((model, dtype, backend, "sfm")),
                )
                if plain and sfm and plain["batch"] == sfm["batch"]:
                    for key in ("train_ms", "infer_ms", "train_peak_mib", "infer_peak_mib"):
                        value = ratio(sfm[key], plain[key])
                        entry[f"{backend}_sfm_overhead_{key}"] = (
                            None if value is None else value - 1
                        )
            tri = {v: got.get((model, dtype, "triton", v)) for v in VARIANTS}
            ref = {v: got.get((model, dtype, "reference", v)) for v in VARIANTS}
            for variant in VARIANTS:
                if tri[variant] and ref[variant] and tri[variant]["batch"] == ref[variant]["batch"]:
                    entry[f"triton_speedup_train_{variant}"] = ratio(
                        ref[variant]["train_ms"], tri[variant]["train_ms"]
                    )
            if all(tri.values()) and all(ref.values()):
                share_ref = ref["sfm"]["train_ms"] - ref["plain"]["train_ms"]
                share_tri = tri["sfm"]["train_ms"] - tri["plain"]["train_ms"]
                entry["sfm_share_train_ms"] = {"reference": share_ref, "triton": share_tri}
                entry["triton_speedup_sfm_share"] = share_ref / share_tri if share_tri > 0 else None
            if len(entry) > 2:
                out.append(entry)
    return out  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backbone | dtype | backend | variant | batch | train ms | train peak MiB | infer ms "
        "| infer peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "train_ms" not in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['backend']} | {r['variant']} | "
                         f"— | failed: {r.get('error', '?')[:60]} | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['backend']} | {r['variant']} | {r['batch']} | "
            f"{r['train_ms']:.1f} | {r['train_peak_mib']:.0f} | {r['infer_ms']:.1f} | "
            f"{r['infer_peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    import triton

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def cases(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """In priority order: R50 before Swin-T, fp32 before bf16, plain next to sfm."""
    for model in args.models:
        for dtype in args.dtypes:
            for backend in args.backends:
                for variant in VARIANTS:
                    yield {"model": model, "dtype": dtype, "backend": backend, "variant": variant}


def csv(choices: Any) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = text.split(",")
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(choices)}")
        return values

    return parse


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=csv(MODELS), default=list(MODELS))
    parser.add_argument("--dtypes", type=csv(DTYPES), default=list(DTYPES))
    parser.add_argument("--backends", type=csv(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=0, help="start no case after S seconds")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, TRITON_INTERPRET=1, tiny")
    args = parser.parse_args(argv)
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--dry-run runs the triton backend on the CPU: set TRITON_INTERPRET=1")
        args.batch, args.size, args.warmup, args.reps = 2, 64, 0, 1  # BN in ARS needs 2
    elif not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        parser.error(
            "needs a CUDA device and compiled kernels (unset TRITON_INTERPRET); or --dry-run"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    start = time.monotonic()
    device = torch.device("cpu" if args.dry_run else "cuda")
    now = datetime.datetime.now(datetime.timezone.utc)
    payload: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "environment": environment(device),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
        "summary": [],
        "not_run": [],
    }
    slug = "dry-run" if args.dry_run else payload["environment"]["device"].replace(" ", "-")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_mask2former_gpu-{slug}-{now:%Y%m%d-%H%M%S}.json"

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(path)

    save()
    for case in cases(args):
        if args.deadline and time.monotonic() - start > args.deadline:
            payload["not_run"].append(case)
            continue
        began = time.monotonic()
        try:
            row = run_case(case, args, device)
        except Exception as error:  # one failing case must not lose the others
            row = {**case, "error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
        row["case_s"] = time.monotonic() - began
        payload["rows"].append(row)
        payload["summary"] = summarize(payload["rows"])
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
        save()
    save()
    env = payload["environment"]
    print(f"{env['device']}, torch {env['torch']}, triton {env['triton']}, {payload['date']}")
    print(table(payload["rows"]))
    print("summary:", json.dumps(payload["summary"], indent=1))
    if payload["not_run"]:
        print(f"not run (deadline {args.deadline:.0f} s):", payload["not_run"])
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    result = main(sys.argv[1:])
    sys.exit(1 if any("error" in r for r in result["rows"]) else 0)
