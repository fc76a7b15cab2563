"""Compile every config of the multi-scale deformable attention kernels for sm_90, without a GPU.

The companion of ``compile_for_gpu.py`` (same helpers, same JSON lines: registers and spill bytes
from the wheel's ``ptxas -v``). Run without ``TRITON_INTERPRET``. Specialisations mirror what the
JIT does for real calls: a stride of 1 becomes a constant.
"""

from __future__ import annotations

from typing import Any

from compile_for_gpu import compile_all

from sfm_triton.ops import ms_deform_attn as msda


def cases() -> list[tuple[str, Any, dict[str, str], dict[str, Any]]]:
    """(label, kernel, pointer dtypes, specialised constants); autotuned: every config."""
    ints = {
        "shapes_ptr": "*i64",
        "starts_ptr": "*i64",
        "keys_ptr": "*i32",
        "order_ptr": "*i64",
        "offsets_ptr": "*i64",
    }
    bf16 = {
        **ints,
        "value_ptr": "*bf16",
        "out_ptr": "*bf16",
        "grad_ptr": "*bf16",
        "grad_value_ptr": "*bf16",
    }
    unit = {"svc": 1, "soc": 1, "slx": 1, "swp": 1, "sgc": 1, "sdc": 1}
    both = {"NEED_LOC": True, "NEED_WEIGHTS": True}
    return [
        ("ms_deform_attn forward bf16", msda._forward_kernel, bf16, unit),
        ("ms_deform_attn forward fp32", msda._forward_kernel, ints, unit),
        ("ms_deform_attn grad sampling bf16", msda._grad_sampling_kernel, bf16,
         {**unit, **both}),
        ("ms_deform_attn grad sampling fp32", msda._grad_sampling_kernel, ints,
         {**unit, **both}),
        ("ms_deform_attn corner list", msda._corner_list_kernel, ints,
         {**unit, "BLOCK": msda._CORNER_BLOCK}),
        ("ms_deform_attn grad value bf16", msda._grad_value_kernel, bf16, unit),
        ("ms_deform_attn grad value fp32", msda._grad_value_kernel, ints, unit),
    ]  # fmt: skip


if __name__ == "__main__":
    compile_all(cases())
