"""Benchmark: one Mask2Former training iteration (forward + backward), SFM on vs off, one run.

The model is the official ADE20K R50 yaml (recreated in tests/configs/mask2former_official) with
our registered names; "plain" sets ``MODEL.SFM.ARS_STAGES: []`` and every
``MODEL.SFM.MASK2FORMER`` switch off (= Mask2Former), "sfm" keeps the defaults (ARS before
res3/res4/res5, all four switches on) and runs on the default backend (for CPU tensors
sfm-core's ``cpu`` backend, ``sfm_core.cpu``), "sfm-reference" is the same model on the reference
ops (``SFM_BACKEND=reference``). All get the same synthetic batch (uint8 images with 150-class
label maps made of random rectangles) and the same seed.

* Per op: each ARS and the LPRM module of the sfm model, forward + backward on the inputs they
  get in the iteration, reference vs fast (median CPU time of ``--repeats`` interleaved runs).

* Time: after one warm-up iteration each, the two models alternate for ``--repeats`` iterations
  in one process; the table gives the median wall time and the median CPU time (process time,
  all threads) per iteration. On a shared machine the CPU time is the steadier number.
* Memory: each variant runs one iteration in a fresh subprocess that reports its peak RSS
  (``VmHWM``) and the peak minus the RSS right before the iteration (model and batch built).
* FLOPs: fvcore (``sfm_d2.flops.flop_count``, with ``sfm_core.flops.fvcore_handles``) on the
  forward of backbone + head for the batch, MACs as detectron2's analyze_model counts them. The
  criterion (Hungarian matching, point losses) is not counted; it is the same for both.
* ``--threads N`` sets torch's thread count (here and in the memory subprocesses). On a shared
  machine one thread avoids threads spinning while they wait for each other, which the CPU time
  would count.
* ``--profile``: torch.profiler over one iteration of each; the table of the ops whose self CPU
  time grew most from plain to sfm (where the SFM overhead goes).

Run: ``python packages/sfm-d2/benchmarks/bench_mask2former.py [--repeats 3] [--threads 1]
[--profile]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import sfm_d2  # before detectron2: its compat layer must run first

# isort: split
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torch import nn

from sfm_d2.flops import flop_count

YAML = (
    Path(__file__).parents[1]
    / "tests/configs/mask2former_official/ade20k/maskformer2_R50_bs16_160k.yaml"
)
NAMES = [
    "MODEL.META_ARCHITECTURE", "SFMMaskFormer",
    "MODEL.SEM_SEG_HEAD.NAME", "SFMMaskFormerHead",
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "SFMMSDeformAttnPixelDecoder",
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "SFMMultiScaleMaskedTransformerDecoder",
    "MODEL.BACKBONE.NAME", "build_sfm_resnet_backbone",
    "MODEL.DEVICE", "cpu",
]  # fmt: skip
SWITCHES = ("WARPED_POSITIONAL_ENCODING", "NONUNIFORM_UPSAMPLE", "LPRM", "WARPED_MASK_ATTENTION")
VARIANTS = ("plain", "sfm", "sfm-reference")
BACKENDS = {"plain": None, "sfm": None, "sfm-reference": "reference"}  # SFM_BACKEND per variant


def build(variant: str) -> nn.Module:
    opts: list[Any] = list(NAMES)
    if variant == "plain":
        opts += ["MODEL.SFM.ARS_STAGES", []]
        opts += [x for s in SWITCHES for x in (f"MODEL.SFM.MASK2FORMER.{s}", False)]
    torch.manual_seed(0)
    model = build_model(sfm_d2.load_config(YAML, opts))
    return model.train()


def make_batch(batch: int, size: int, num_classes: int = 150) -> list[dict[str, Any]]:
    """Images and label maps of random rectangles (10 classes per image), fixed seed."""
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(batch):
        label = torch.zeros(size, size, dtype=torch.long)
        for c in torch.randperm(num_classes, generator=gen)[:10].tolist():
            y0, x0 = torch.randint(0, size - 32, (2,), generator=gen).tolist()
            h, w = torch.randint(16, size // 2, (2,), generator=gen).tolist()
            label[y0 : y0 + h, x0 : x0 + w] = c
        image = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
        classes = label.unique()
        instances = Instances((size, size))
        instances.gt_classes = classes
        instances.gt_masks = torch.stack([label == c for c in classes])
        inputs.append({"image": image, "sem_seg": label, "instances": instances})
    return inputs


def use_backend(variant: str) -> None:
    """Set ``SFM_BACKEND`` for ``variant`` (unset: the default choice)."""
    os.environ.pop("SFM_BACKEND", None)
    if BACKENDS[variant] is not None:
        os.environ["SFM_BACKEND"] = str(BACKENDS[variant])


def op_steps(model: nn.Module, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each ARS / LPRM module of ``model`` as a forward + backward closure on its real inputs."""
    from sfm_core.nn import AdaptiveResampling, LocalPixelRelation

    found: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]] = {}

    def record(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        found.setdefault(name, (module, tuple(a.detach() for a in args)))  # returns None

    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: record(name, m, args))
        for name, module in model.named_modules()
        if isinstance(module, (AdaptiveResampling, LocalPixelRelation))
    ]
    with torch.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
    steps = {}
    for name, (module, args) in found.items():
        leaves = tuple(a.clone().requires_grad_() for a in args)

        def step(module: nn.Module = module, leaves: tuple[torch.Tensor, ...] = leaves) -> None:
            module.zero_grad(set_to_none=True)
            out = module(*leaves)
            (out.features if isinstance(out, tuple) else out).sum().backward()

        label = f"{type(module).__name__} {name.split('.')[-1]} {list(args[0].shape)}"
        steps[label] = step
    return steps


def time_ops(steps: dict[str, Any], repeats: int) -> list[tuple[str, float, float]]:
    """(op, reference CPU s, fast CPU s): medians of interleaved runs, one warm-up each."""
    rows = []
    for label, step in steps.items():
        times: dict[str, list[float]] = {"reference": [], "fast": []}
        for round_ in range(repeats + 1):
            for name in ("reference", "fast") if round_ % 2 else ("fast", "reference"):
                use_backend("sfm-reference" if name == "reference" else "sfm")
                cpu = time.process_time()
                step()
                if round_:
                    times[name].append(time.process_time() - cpu)
        rows.append(
            (label, statistics.median(times["reference"]), statistics.median(times["fast"]))
        )
    use_backend("sfm")
    return rows


def iteration(model: nn.Module, inputs: list[dict[str, Any]]) -> tuple[float, float]:
    """Wall and CPU seconds of one forward + backward (gradients dropped afterwards)."""
    wall, cpu = time.perf_counter(), time.process_time()
    losses = model(inputs)
    torch.stack(list(losses.values())).sum().backward()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.zero_grad(set_to_none=True)
    return wall, cpu


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(variant: str, batch: int, size: int) -> dict[str, float]:
    """Peak RSS of one iteration in this (fresh) process, and its increase over the RSS before."""
    use_backend(variant)
    model = build(variant)
    inputs = make_batch(batch, size)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    iteration(model, inputs)
    peak = _rss_kib("VmHWM")
    return {"peak_rss_mib": peak / 1024, "iteration_extra_mib": (peak - before) / 1024}


def measure_memory(variant: str, batch: int, size: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--memory-child", variant, "--batch", str(batch)]
    args += ["--size", str(size), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


class BackboneAndHead(nn.Module):
    """The traced part for fvcore: backbone + head on a normalised, padded batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.sem_seg_head(self.model.backbone(images))
        return out["pred_logits"], out["pred_masks"]


def gflops(model: nn.Module, inputs: list[dict[str, Any]]) -> tuple[float, dict[str, int]]:
    """fvcore GFLOPs of backbone + head (handles: :func:`sfm_d2.flops.sfm_handles`)."""
    model.eval()
    try:
        with torch.no_grad():
            images = model.preprocess_image(inputs).tensor
            analysis = flop_count(BackboneAndHead(model), images)
    finally:
        model.train()
    return analysis.total() / 1e9, dict(analysis.unsupported_ops())


def profile_growth(models: dict[str, nn.Module], inputs: list[dict[str, Any]], top: int) -> str:
    """Ops whose self CPU time grew most from plain to sfm, over one iteration each."""
    self_ms: dict[str, dict[str, float]] = {}
    for variant, model in models.items():
        use_backend(variant)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            iteration(model, inputs)
        self_ms[variant] = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    ops = set(self_ms["plain"]) | set(self_ms["sfm"])
    growth = sorted(
        ((self_ms["sfm"].get(k, 0.0) - self_ms["plain"].get(k, 0.0), k) for k in ops),
        reverse=True,
    )
    lines = ["| op | plain self CPU (ms) | sfm self CPU (ms) | growth (ms) |", "|---|---|---|---|"]
    for delta, key in growth[:top]:
        plain, sfm = self_ms["plain"].get(key, 0.0), self_ms["sfm"].get(key, 0.0)
        lines.append(f"| `{key}` | {plain:.0f} | {sfm:.0f} | {delta:+.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.batch, args.size)))
        return

    inputs = make_batch(args.batch, args.size)
    models = {v: build(v) for v in VARIANTS}
    params = {v: sum(p.numel() for p in m.parameters()) for v, m in models.items()}
    flops = {v: gflops(m, inputs) for v, m in models.items()}
    for variant, model in models.items():
        use_backend(variant)
        iteration(model, inputs)  # warm-up
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant, model in models.items():
            use_backend(variant)
            times[variant].append(iteration(model, inputs))
    use_backend("sfm")
    op_rows = time_ops(op_steps(models["sfm"], inputs), args.repeats)
    memory = {v: measure_memory(v, args.batch, args.size) for v in VARIANTS}

    rows = {}
    for v in VARIANTS:
        rows[v] = {
            "params_m": params[v] / 1e6,
            "wall_s": statistics.median(t[0] for t in times[v]),
            "cpu_s": statistics.median(t[1] for t in times[v]),
            "gflops": flops[v][0],
            **memory[v],
        }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, batch {args.batch} x {args.size}², {args.repeats} repeats"
    )
    print("| | params (M) | wall s/iter | CPU s/iter | peak RSS (MiB) | iteration extra (MiB) "
          "| fvcore GFLOPs (fwd, batch) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        r = rows[v]
        print(
            f"| {v} | {r['params_m']:.2f} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['iteration_extra_mib']:.0f} | {r['gflops']:.1f} |"
        )
    p = rows["plain"]
    for v in VARIANTS[1:]:
        s = rows[v]
        print(
            f"| {v} overhead | {s['params_m'] / p['params_m'] - 1:+.1%} | "
            f"{s['wall_s'] / p['wall_s'] - 1:+.1%} | {s['cpu_s'] / p['cpu_s'] - 1:+.1%} | "
            f"{s['peak_rss_mib'] / p['peak_rss_mib'] - 1:+.1%} | "
            f"{s['iteration_extra_mib'] / p['iteration_extra_mib'] - 1:+.1%} | "
            f"{s['gflops'] / p['gflops'] - 1:+.1%} |"
        )
    print("| op (sfm model, fwd + bwd, its real input) | reference CPU s | fast CPU s | speed-up |")
    print("|---|---|---|---|")
    for label, slow, fast in op_rows:
        print(f"| {label} | {slow:.3f} | {fast:.3f} | {slow / fast:.1f}x |")
    print("fvcore skipped (counted 0):", {v: sorted(flops[v][1]) for v in VARIANTS})
    print("raw:", json.dumps({"rows": rows, "times": times, "ops": op_rows}))
    if args.profile:
        print(profile_growth(models, inputs, top=12))


if __name__ == "__main__":
    main()
