"""Compile every autotune config of the resample and saliency kernels for sm_90, without a GPU.

The interpreter runs kernels as numpy, so it cannot see compile errors, register pressure or
spills; ``triton.compile`` for a ``GPUTarget`` can, on any machine. Run without
``TRITON_INTERPRET`` (the kernels must be JIT functions); prints one JSON line per compile with
the registers and spill bytes that the wheel's own ``ptxas -v`` reports.
Specialisations mirror what the JIT does for real calls: a stride of 1 becomes a constant.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from sfm_triton.ops import resample, saliency

ARCH = 90
FLOAT_ARGS = {"s_min", "gauss"}


def signature(fn: Any, pointers: dict[str, str], constants: dict[str, Any]) -> dict[str, str]:
    types = {}
    for name in fn.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = pointers.get(name, "*fp32")
        else:
            types[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return types


def ptxas_report(ptx: str) -> tuple[int, int]:
    """(registers, spill store bytes) from ptxas -v."""
    # The ptxas Triton itself uses for this arch: triton>=3.9 emits PTX that only its newer
    # bundled ptxas (ptxas-blackwell) accepts for sm_90.
    ptxas = get_ptxas(ARCH).path
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
        handle.write(ptx)
    try:
        report = subprocess.run(
            [ptxas, "-v", f"--gpu-name=sm_{ARCH}a", handle.name, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    finally:
        os.unlink(handle.name)
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas report:\n{report}")
    return int(registers.group(1)), int(spills.group(1))


def cases() -> list[tuple[str, Any, dict[str, str], dict[str, Any]]]:
    """(label, autotuned kernel, pointer dtypes, specialised constants) to compile."""
    channels_last = {"sxc": 1, "soc": 1, "sdc": 1, "sbc": 1}
    nchw = {"sxw": 1, "sow": 1, "sdw": 1, "sbw": 1}
    both = {"NEED_X": True, "NEED_GRID": True}
    bf16 = {"x_ptr": "*bf16", "out_ptr": "*bf16", "grad_out_ptr": "*bf16"}
    forward = resample._resample_forward_kernel
    backward = resample._resample_backward_kernel
    return [
        ("resample forward bf16 channels-last", forward, bf16, channels_last),
        ("resample forward fp32 NCHW", forward, {}, nchw),
        ("resample backward bf16 channels-last", backward, bf16, {**channels_last, **both}),
        ("resample backward fp32 NCHW", backward, {}, {**nchw, **both}),
        (
            "saliency forward fp16",
            saliency._saliency_forward_kernel,
            {"logits_ptr": "*fp16"},
            {"WINDOW": 5},
        ),
        (
            "saliency backward fp16",
            saliency._saliency_backward_kernel,
            {"logits_ptr": "*fp16"},
            {"WINDOW": 5},
        ),
        ("saliency coefficients", saliency._saliency_coefficients_kernel, {}, {"BLOCK": 128}),
    ]


Case = tuple[str, Any, dict[str, str], dict[str, Any]]


def compile_all(all_cases: list[Case]) -> None:
    """Compile every case for sm_90 (every config of an autotuned kernel, else one with 4 warps)
    and print one JSON line per compile."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET: the kernels must be JIT functions")
    target = GPUTarget("cuda", ARCH, 32)
    for label, kernel, pointers, constants in all_cases:
        autotuned = isinstance(kernel, triton.runtime.Autotuner)
        configs = kernel.configs if autotuned else [triton.Config({}, num_warps=4)]
        fn = kernel.fn if autotuned else kernel
        for config in configs:
            values = {
                name: value
                for name, value in {**constants, **config.kwargs}.items()
                if name in fn.arg_names
            }
            source = ASTSource(fn=fn, signature=signature(fn, pointers, values), constexprs=values)
            compiled = triton.compile(
                source, target=target, options={"num_warps": config.num_warps}
            )
            registers, spills = ptxas_report(compiled.asm["ptx"])
            print(
                json.dumps(
                    {
                        "kernel": label,
                        "config": {**config.kwargs, "num_warps": config.num_warps},
                        "registers": registers,
                        "spill_bytes": spills,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    compile_all(cases())
