"""Benchmark every sfm-triton kernel against its baseline, in one run, on one GPU.

Prints one table and writes JSON (device, versions, shapes, date, every row) to ``results/``.
Every ratio compares timings taken in this run, same device, same feature dtype:

* ``resample``: forward vs ``F.grid_sample`` (bilinear, border, ``align_corners=False``, NCHW,
  grid in the feature dtype as grid_sample requires; ours takes the fp32 grid), for channels-last
  and NCHW inputs; compulsory-bytes bandwidth (x + grid read once, out written once) against a
  device-to-device copy measured here; backward (grad x + grad grid) vs grid_sample's backward.
  Shapes: the inputs of the three ARS of ResNet-50 and Swin-T at a 512² crop, batch 8, on a
  learned-looking grid, plus one uniformly random grid (stress: no locality).
* ``saliency_grid``: forward + backward vs the eager reference.
* ``lprm_aggregate`` and ``nonuniform_upsample``: forward + backward vs the eager reference and vs
  ``torch.compile`` of it, and peak memory vs the eager reference; ``nonuniform_upsample``
  forward also vs scipy's ``LinearNDInterpolator`` (+ nearest fill outside the hull, as ours),
  looped over the batch on the CPU, as the authors demodulated.
* ``ms_deform_attn``: multi-scale deformable attention, forward and forward + backward vs the
  eager reference (``F.grid_sample`` per level, as Deformable DETR's PyTorch fallback) and vs
  ``torch.compile`` of it, and peak memory; Mask2Former's pixel-decoder encoder layer at an ADE20K
  512² crop (batch 2, levels 64², 32², 16², 8 heads of 32 channels, 4 points, every pixel a query).
* ``training_step``: forward + backward + SGD step of three ARS (ResNet-50 stage shapes) and one
  MSAU (256 channels, 1/8 → 1/4), ``backend="triton"`` vs ``backend="reference"``.

Timings are medians of CUDA-event-timed repeats after a warm-up (autotuning happens there); each
row also shows the largest error against the reference (relative to the reference's largest
magnitude), and a row fails when that exceeds the tolerance table, however fast it is.

Run on the GPU machine: ``python packages/sfm-triton/benchmarks/bench_kernels.py``. ``--dry-run``
runs every case on tiny CPU tensors under ``TRITON_INTERPRET=1`` (CI uses it so this script
cannot rot); its timings mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton
from torch import nn

import sfm_core
import sfm_triton
from sfm_core import functional as reference
from sfm_core.nn import AdaptiveResampling, MultiScaleAdaptiveUpsampling
from sfm_triton.ops.lprm import lprm_aggregate
from sfm_triton.ops.ms_deform_attn import ms_deform_attn
from sfm_triton.ops.nonuniform import nonuniform_upsample
from sfm_triton.ops.resample import resample
from sfm_triton.ops.saliency import saliency_grid
from sfm_triton.testing import deformable_attention_inputs, tolerance, warped_positions

RESULTS = Path(__file__).with_name("results")
OPS = (
    "resample",
    "saliency_grid",
    "lprm_aggregate",
    "nonuniform_upsample",
    "ms_deform_attn",
    "training_step",
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# (C, H, W) entering each ARS at a 512² crop.
R50_STAGES = [(256, 128, 128), (512, 64, 64), (1024, 32, 32)]
SWIN_STAGES = [(96, 128, 128), (192, 64, 64), (384, 32, 32)]


@dataclass
class Shapes:
    """Every shape the run uses; ``--dry-run`` swaps in tiny ones."""

    batch: int
    resample: list[tuple[str, int, int, int]]  # (label, C, H, W)
    saliency: list[tuple[int, int]]
    lprm: list[tuple[int, int, int, int]]  # (C, H, W, dilation)
    nonuniform: list[tuple[int, int, int, int, int]]  # (K, h, w, Ho, Wo)
    training: list[tuple[int, int, int]]  # ARS stages (C, H, W); MSAU goes 2x from the first/2
    # (batch, levels (H, W), heads, channels per head, points); queries = every pixel
    deform: tuple[int, list[tuple[int, int]], int, int, int]


FULL = Shapes(
    batch=8,
    resample=[("R50", *s) for s in R50_STAGES] + [("Swin-T", *s) for s in SWIN_STAGES],
    saliency=[(128, 128), (64, 64), (32, 32)],
    lprm=[(256, 128, 128, 1), (256, 128, 128, 4), (256, 128, 128, 16), (96, 128, 128, 2)],
    nonuniform=[(256, 64, 64, 128, 128), (19, 64, 64, 128, 128)],
    training=R50_STAGES,
    deform=(2, [(64, 64), (32, 32), (16, 16)], 8, 32, 4),
)
TINY = Shapes(
    batch=2,
    resample=[("tiny", 6, 9, 11)],
    saliency=[(9, 11)],
    lprm=[(5, 9, 11, 2)],
    nonuniform=[(3, 5, 6, 9, 11)],
    training=[(4, 8, 10)],
    deform=(2, [(3, 4), (2, 2), (1, 1)], 2, 4, 2),
)


@dataclass
class Row:
    """One line of the table: ``ours`` against ``baseline`` for one metric."""

    op: str
    case: str
    dtype: str
    metric: str  # "speedup" (ms), "memory" (MiB) or "bandwidth" (GB/s vs copy)
    ours: float
    baseline_name: str
    baseline: float
    target: float | None
    error: float | None = None  # largest |ours - reference| / max |reference|
    error_ok: bool = True

    @property
    def ratio(self) -> float:
        if self.metric == "memory":
            return self.ours / self.baseline if self.baseline else float("inf")
        if self.metric == "bandwidth":
            return self.ours / self.baseline
        return self.baseline / self.ours if self.ours else float("inf")

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None if self.error_ok else False
        met = self.ratio <= self.target if self.metric == "memory" else self.ratio >= self.target
        return met and self.error_ok


class Clock:
    """Median time of a callable: CUDA events on a GPU, wall clock in a dry run."""

    def __init__(self, device: torch.device, warmup: int, reps: int) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps

    def ms(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        if self.device.type != "cuda":
            times = []
            for _ in range(self.reps):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)
        torch.cuda.synchronize()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(self.reps)
        ]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events)

    def peak_mib(self, fn: Callable[[], object]) -> float:
        """Memory allocated at the peak of ``fn`` beyond what was allocated before (0 on CPU)."""
        if self.device.type != "cuda":
            return 0.0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.detach().double().abs().max().clamp_min(1e-30)
    return float((ours.detach().double() - expected.detach().double()).abs().max() / scale)


def within_tolerance(error: float, dtype: torch.dtype) -> bool:
    """Within the tolerance table, read relative to the tensor's largest magnitude."""
    limit = tolerance(dtype)
    return error <= limit["rtol"] + limit["atol"]


def ars_grid(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """A learned-looking grid: the reference saliency grid of smooth random logits."""
    coarse = torch.randn(batch, 1, max(2, height // 8), max(2, width // 8), device=device)
    logits = F.interpolate(coarse, size=(height, width), mode="bilinear")
    return reference.saliency_grid(3.0 * logits)


def grads(outputs: torch.Tensor, inputs: Iterable[torch.Tensor], grad: torch.Tensor) -> Any:
    return torch.autograd.grad(outputs, tuple(inputs), grad, retain_graph=True)


def copy_bandwidth(clock: Clock, device: torch.device, dry_run: bool) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written)."""
    numel = 2**16 if dry_run else 2**28
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / clock.ms(lambda: dst.copy_(src)) / 1e6


def bench_resample(
    clock: Clock, shapes: Shapes, dtypes: list[torch.dtype], copy_gbps: float, device: torch.device
) -> list[Row]:
    rows = []
    cases = [(label, c, h, w, "ars") for label, c, h, w in shapes.resample]
    label, c, h, w = shapes.resample[0]
    cases.append((label, c, h, w, "random"))
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for label, channels, height, width, kind in cases:
            batch = shapes.batch
            case = f"{label} {channels}@{height}x{width} {kind} grid"
            x = torch.randn(batch, channels, height, width, device=device).to(dtype)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            grid = (
                ars_grid(batch, height, width, device)
                if kind == "ars"
                else torch.rand(batch, height, width, 2, device=device) * 2.2 - 1.1
            )
            grid_base = grid.to(dtype)
            expected = reference.resample(x.float(), grid).to(dtype)
            error = relative_error(resample(x_cl, grid), expected)
            ok = within_tolerance(error, dtype)

            def baseline_forward(x: torch.Tensor = x, grid_base: torch.Tensor = grid_base) -> Any:
                return F.grid_sample(x, grid_base, "bilinear", "border", False)

            base_ms = clock.ms(baseline_forward)
            ours_cl_ms = clock.ms(lambda x_cl=x_cl, grid=grid: resample(x_cl, grid))
            ours_nchw_ms = clock.ms(lambda x=x, grid=grid: resample(x, grid))
            rows.append(
                Row(
                    "resample fwd",
                    f"{case}, channels-last in",
                    name,
                    "speedup",
                    ours_cl_ms,
                    "grid_sample",
                    base_ms,
                    1.3,
                    error,
                    ok,
                )
            )
            rows.append(
                Row(
                    "resample fwd",
                    f"{case}, NCHW in",
                    name,
                    "speedup",
                    ours_nchw_ms,
                    "grid_sample",
                    base_ms,
                    1.3,
                    error,
                    ok,
                )
            )
            compulsory = x.nbytes + grid.nbytes + expected.nbytes
            gbps = compulsory / ours_cl_ms / 1e6
            rows.append(
                Row(
                    "resample fwd",
                    f"{case}, channels-last in",
                    name,
                    "bandwidth",
                    gbps,
                    "copy",
                    copy_gbps,
                    0.5,
                    error,
                    ok,
                )
            )

            x_cl.requires_grad_()
            x.requires_grad_()
            grid_ours = grid.clone().requires_grad_()
            grid_base.requires_grad_()
            out_ours = resample(x_cl, grid_ours)
            out_base = F.grid_sample(x, grid_base, "bilinear", "border", False)
            grad_out = torch.randn_like(out_base)
            got = grads(out_ours, (x_cl, grid_ours), grad_out)
            expected_grads = grads(
                reference.resample(x.float(), grid_ours), (x, grid_ours), grad_out.float()
            )
            back_error = max(relative_error(a, b) for a, b in zip(got, expected_grads, strict=True))
            ours_ms = clock.ms(lambda o=out_ours, i=(x_cl, grid_ours), g=grad_out: grads(o, i, g))
            base_ms = clock.ms(lambda o=out_base, i=(x, grid_base), g=grad_out: grads(o, i, g))
            rows.append(
                Row(
                    "resample bwd",
                    f"{case}, channels-last in",
                    name,
                    "speedup",
                    ours_ms,
                    "grid_sample bwd",
                    base_ms,
                    3.0,
                    back_error,
                    within_tolerance(back_error, dtype),
                )
            )
    return rows  # fmt: skip


def fwd_bwd(
    fn: Callable[..., torch.Tensor], inputs: tuple[Any, ...], grad: torch.Tensor
) -> Callable[[], Any]:
    differentiable = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return lambda: torch.autograd.grad(fn(*inputs), differentiable, grad)


def compare_fwd_bwd(
    clock: Clock,
    op: str,
    case: str,
    dtype: torch.dtype,
    ours: Callable[..., torch.Tensor],
    eager: Callable[..., torch.Tensor],
    inputs: tuple[Any, ...],
    *,
    speedup_eager: float,
    compile_baseline: bool,
    speedup_compiled: float | None = None,
    memory_target: float | None = None,
) -> list[Row]:
    """fwd+bwd of ``ours`` vs the eager reference (and its torch.compile), errors, peak memory."""
    name = str(dtype).removeprefix("torch.")
    expected = eager(*inputs)
    grad = torch.randn_like(expected)
    ours_step, eager_step = fwd_bwd(ours, inputs, grad), fwd_bwd(eager, inputs, grad)
    got, reference_grads = ours_step(), eager_step()
    error = max(
        [relative_error(ours(*inputs), expected)]
        + [relative_error(a, b) for a, b in zip(got, reference_grads, strict=True)]
    )
    ok = within_tolerance(error, dtype)
    ours_ms = clock.ms(ours_step)
    rows = [
        Row(
            op,
            case,
            name,
            "speedup",
            ours_ms,
            "eager reference",
            clock.ms(eager_step),
            speedup_eager,
            error,
            ok,
        )
    ]
    if memory_target is not None:
        rows.append(
            Row(
                op,
                case,
                name,
                "memory",
                clock.peak_mib(ours_step),
                "eager reference",
                clock.peak_mib(eager_step),
                memory_target,
                error,
                ok,
            )
        )
    if compile_baseline and speedup_compiled is not None:
        compiled = fwd_bwd(torch.compile(eager), inputs, grad)
        rows.append(
            Row(
                op,
                case,
                name,
                "speedup",
                ours_ms,
                "compiled reference",
                clock.ms(compiled),
                speedup_compiled,
                error,
                ok,
            )
        )
    return rows  # fmt: skip


def bench_saliency(
    clock: Clock, shapes: Shapes, device: torch.device, compile_baseline: bool
) -> list[Row]:
    rows = []
    for height, width in shapes.saliency:
        logits = (3.0 * torch.randn(shapes.batch, 1, height, width, device=device)).requires_grad_()
        case = f"logits {shapes.batch}x1x{height}x{width}"
        rows += compare_fwd_bwd(
            clock,
            "saliency_grid fwd+bwd",
            case,
            torch.float32,
            saliency_grid,
            reference.saliency_grid,
            (logits,),
            speedup_eager=5.0,
            compile_baseline=False,
        )
    return rows  # fmt: skip


def bench_lprm(
    clock: Clock,
    shapes: Shapes,
    dtypes: list[torch.dtype],
    device: torch.device,
    compile_baseline: bool,
) -> list[Row]:
    rows = []
    for dtype in dtypes:
        for channels, height, width, dilation in shapes.lprm:
            v = (
                torch.randn(shapes.batch, channels, height, width, device=device)
                .to(dtype)
                .requires_grad_()
            )
            logits = (
                torch.randn(shapes.batch, 9, height, width, device=device)
                .to(dtype)
                .requires_grad_()
            )
            case = f"{channels}@{height}x{width} d={dilation}"
            rows += compare_fwd_bwd(
                clock,
                "lprm_aggregate fwd+bwd",
                case,
                dtype,
                lprm_aggregate,
                reference.lprm_aggregate,
                (v, logits, dilation),
                speedup_eager=10.0,
                compile_baseline=compile_baseline,
                speedup_compiled=2.0,
                memory_target=0.2,
            )
    return rows  # fmt: skip


def scipy_upsample(z: torch.Tensor, positions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The authors' demodulation, per image on the CPU: Delaunay-linear, nearest outside the hull."""
    import numpy as np
    from scipy.interpolate import LinearNDInterpolator
    from scipy.spatial import cKDTree

    height, width = size
    rows, cols = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    targets = np.stack([cols.ravel(), rows.ravel()], axis=1)
    outputs = []
    for values, where in zip(
        z.double().cpu().numpy(), positions.double().cpu().numpy(), strict=True
    ):
        points = np.stack([where[0].ravel() * width, where[1].ravel() * height], axis=1)
        flat = values.reshape(values.shape[0], -1).T
        result = LinearNDInterpolator(points, flat, fill_value=np.nan)(targets)
        holes = np.isnan(result).any(axis=1)
        if holes.any():
            result[holes] = flat[cKDTree(points).query(targets[holes])[1]]
        outputs.append(result.T.reshape(values.shape[0], height, width))
    return torch.from_numpy(np.stack(outputs))


def scipy_available() -> bool:
    """scipy (optional here: the GPU machine may lack it), imported before any clock starts."""
    try:
        import scipy.interpolate
        import scipy.spatial  # noqa: F401
    except ImportError:
        print("scipy is not installed: the scipy baseline is skipped")
        return False
    return True


def bench_nonuniform(
    clock: Clock,
    shapes: Shapes,
    dtypes: list[torch.dtype],
    device: torch.device,
    compile_baseline: bool,
) -> list[Row]:
    rows = []
    with_scipy = scipy_available()
    for dtype in dtypes:
        for channels, height, width, out_h, out_w in shapes.nonuniform:
            z = (
                torch.randn(shapes.batch, channels, height, width, device=device)
                .to(dtype)
                .requires_grad_()
            )
            positions = warped_positions(shapes.batch, height, width, device=device)
            size = (out_h, out_w)
            case = f"{channels}@{height}x{width} -> {out_h}x{out_w}"
            rows += compare_fwd_bwd(
                clock,
                "nonuniform_upsample fwd+bwd",
                case,
                dtype,
                nonuniform_upsample,
                reference.nonuniform_upsample,
                (z, positions, size),
                speedup_eager=10.0,
                compile_baseline=compile_baseline,
                speedup_compiled=2.0,
                memory_target=0.2,
            )
            if dtype == torch.float32 and with_scipy:
                with torch.no_grad():
                    ours_ms = clock.ms(
                        lambda z=z, p=positions, s=size: nonuniform_upsample(z, p, s)
                    )
                start = time.perf_counter()
                scipy_out = scipy_upsample(z.detach(), positions, size)
                scipy_ms = (time.perf_counter() - start) * 1e3
                ours_out = nonuniform_upsample(z, positions, size).detach().cpu().double()
                # Share of output values where the two triangulations agree (they differ where a
                # cell's shorter diagonal is not the Delaunay edge).
                agree = float(((scipy_out - ours_out).abs() < 1e-4).double().mean())
                rows.append(
                    Row(
                        "nonuniform_upsample fwd",
                        f"{case}, batch (agree {agree:.1%})",
                        "float32",
                        "speedup",
                        ours_ms,
                        "scipy per batch",
                        scipy_ms,
                        100.0,
                    )
                )
    return rows  # fmt: skip


def bench_ms_deform_attn(
    clock: Clock,
    shapes: Shapes,
    dtypes: list[torch.dtype],
    device: torch.device,
    compile_baseline: bool,
) -> list[Row]:
    batch, levels, heads, channels, points = shapes.deform
    rows = []
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        value, spatial_shapes, locations, weights = (
            t.requires_grad_() if t.is_floating_point() else t
            for t in deformable_attention_inputs(
                batch, levels, heads, channels, points, dtype=dtype, device=device
            )
        )
        inputs = (value, spatial_shapes, locations, weights)
        case = (
            f"B={batch} levels {'/'.join(f'{h}x{w}' for h, w in levels)} heads {heads}x{channels}"
            f" P={points} Q={value.shape[1]}"
        )
        with torch.no_grad():
            expected = reference.ms_deform_attn(*inputs)
            error = relative_error(ms_deform_attn(*inputs), expected)
            ours_ms = clock.ms(lambda inputs=inputs: ms_deform_attn(*inputs))
            base_ms = clock.ms(lambda inputs=inputs: reference.ms_deform_attn(*inputs))
        rows.append(
            Row(
                "ms_deform_attn fwd",
                case,
                name,
                "speedup",
                ours_ms,
                "eager reference",
                base_ms,
                2.0,
                error,
                within_tolerance(error, dtype),
            )
        )
        rows += compare_fwd_bwd(
            clock,
            "ms_deform_attn fwd+bwd",
            case,
            dtype,
            ms_deform_attn,
            reference.ms_deform_attn,
            inputs,
            speedup_eager=2.0,
            compile_baseline=compile_baseline,
            speedup_compiled=1.0,
            memory_target=1.0,
        )
    return rows  # fmt: skip


class ARSMSAUStep(nn.Module):
    """Three ARS at backbone stage shapes and one MSAU (1/8 → 1/4), as one training step sees them."""

    def __init__(self, stages: list[tuple[int, int, int]], backend: str) -> None:
        super().__init__()
        self.ars = nn.ModuleList(AdaptiveResampling(c, backend=backend) for c, _, _ in stages)
        channels = stages[0][0]
        self.msau = MultiScaleAdaptiveUpsampling(channels, channels, backend=backend)

    def forward(
        self,
        features: list[torch.Tensor],
        z: torch.Tensor,
        positions: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        loss = sum(
            ars(x).features.square().mean() for ars, x in zip(self.ars, features, strict=True)
        )
        return loss + self.msau(z, positions, size).square().mean()  # type: ignore[no-any-return]


def bench_training_step(clock: Clock, shapes: Shapes, device: torch.device) -> list[Row]:
    stages, batch = shapes.training, shapes.batch
    features = [torch.randn(batch, c, h, w, device=device) for c, h, w in stages]
    channels, height, width = stages[0]
    z = torch.randn(batch, channels, height // 2, width // 2, device=device)
    positions = warped_positions(batch, height // 2, width // 2, device=device)
    torch.manual_seed(0)
    models = {name: ARSMSAUStep(stages, name).to(device) for name in ("reference", "triton")}
    with torch.no_grad():  # leave the identity start, so the grids are not trivial
        for parameter in models["reference"].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    models["triton"].load_state_dict(models["reference"].state_dict())
    losses, times = {}, {}
    for name, model in models.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step(
            model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer
        ) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = model(features, z, positions, (height, width))
            loss.backward()
            optimizer.step()
            return loss.detach()

        losses[name] = step()
        times[name] = clock.ms(step)
    error = relative_error(losses["triton"], losses["reference"])
    case = (
        " + ".join(f"ARS {c}@{h}x{w}" for c, h, w in stages)
        + f" + MSAU {channels}@{height // 2}x{width // 2} -> {height}x{width}"
    )
    return [Row("ARS+MSAU training step", case, "float32", "speedup", times["triton"], "reference backend", times["reference"], 3.0, error, within_tolerance(error, torch.float32))]  # fmt: skip


def table(rows: list[Row]) -> str:
    header = ("op", "case", "dtype", "ours", "baseline", "base", "ratio", "target", "err", "pass")
    units = {"speedup": "ms", "memory": "MiB", "bandwidth": "GB/s"}
    lines = []
    for row in rows:
        unit = units[row.metric]
        target = (
            "-"
            if row.target is None
            else (f"<={row.target:g}" if row.metric == "memory" else f">={row.target:g}")
        )
        verdict = {True: "PASS", False: "FAIL", None: "-"}[row.passed]
        lines.append(
            (
                row.op,
                row.case,
                row.dtype,
                f"{row.ours:.4g} {unit}",
                row.baseline_name,
                f"{row.baseline:.4g} {unit}",
                f"{row.ratio:.3g}x",
                target,
                "-" if row.error is None else f"{row.error:.1e}",
                verdict,
            )
        )
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    render = [
        " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in (header, *lines)
    ]
    render.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(render)  # fmt: skip


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "sfm_core": sfm_core.__version__,
        "sfm_triton": sfm_triton.__version__,
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}"
    )
    parser.add_argument(
        "--dtypes", default="bfloat16,float32", help="feature dtypes (comma-separated)"
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile baselines"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny CPU shapes under TRITON_INTERPRET=1; timings mean nothing",
    )
    args = parser.parse_args(argv)
    unknown = set(args.ops.split(",")) - set(OPS)
    if unknown:
        parser.error(f"--ops: unknown {sorted(unknown)}; choose from {list(OPS)}")
    bad = set(args.dtypes.split(",")) - set(DTYPES)
    if bad:
        parser.error(f"--dtypes: unknown {sorted(bad)}; choose from {list(DTYPES)}")
    return args  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit(
                "--dry-run runs the kernels on the CPU: set TRITON_INTERPRET=1 before starting"
            )
        device, shapes, clock = torch.device("cpu"), TINY, Clock(torch.device("cpu"), 0, 1)
        dtypes = [torch.float32]
    else:
        if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
            raise SystemExit(
                "needs a CUDA device and compiled kernels (unset TRITON_INTERPRET); or use --dry-run"
            )
        device, shapes, clock = (
            torch.device("cuda"),
            FULL,
            Clock(torch.device("cuda"), args.warmup, args.reps),
        )
        dtypes = [DTYPES[name] for name in args.dtypes.split(",")]
    ops = args.ops.split(",")
    compile_baseline = not (args.no_compile or args.dry_run)
    torch.manual_seed(0)
    copy_gbps = copy_bandwidth(clock, device, args.dry_run)
    rows: list[Row] = []
    if "resample" in ops:
        rows += bench_resample(clock, shapes, dtypes, copy_gbps, device)
    if "saliency_grid" in ops:
        rows += bench_saliency(clock, shapes, device, compile_baseline)
    if "lprm_aggregate" in ops:
        rows += bench_lprm(clock, shapes, dtypes, device, compile_baseline)
    if "nonuniform_upsample" in ops:
        rows += bench_nonuniform(clock, shapes, dtypes, device, compile_baseline)
    if "ms_deform_attn" in ops:
        rows += bench_ms_deform_attn(clock, shapes, dtypes, device, compile_baseline)
    if "training_step" in ops:
        rows += bench_training_step(clock, shapes, device)

    now = datetime.datetime.now(datetime.timezone.utc)
    payload = {
        "date": now.isoformat(timespec="seconds"),
        "environment": environment(device),
        "args": {k: str(v) for k, v in vars(args).items()},
        "shapes": asdict(shapes),
        "copy_gbps": copy_gbps,
        "rows": [{**asdict(row), "ratio": row.ratio, "passed": row.passed} for row in rows],
    }
    print(
        f"{payload['environment']['device']}, torch {torch.__version__}, triton {triton.__version__}, {payload['date']}"
    )
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s")
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "dry-run" if args.dry_run else payload["environment"]["device"].replace(" ", "-")
    path = args.out / f"bench_kernels-{slug}-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return payload  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
