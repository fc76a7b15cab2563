"""Compile every config of the rasterize / gather / lprm kernels for sm_90, without a GPU.

The companion of ``compile_for_gpu.py`` (same helpers, same JSON lines: registers and spill bytes
from the wheel's ``ptxas -v``). Run without ``TRITON_INTERPRET``. Specialisations mirror what the
JIT does for real calls: a stride of 1 becomes a constant.
"""

from __future__ import annotations

from typing import Any

from compile_for_gpu import compile_all

from sfm_triton.ops import lprm, nonuniform


def cases() -> list[tuple[str, Any, dict[str, str], dict[str, Any]]]:
    """(label, kernel, pointer dtypes, specialised constants); autotuned kernels run every config."""
    names = ("v_ptr", "logits_ptr", "out_ptr", "grad_ptr", "grad_logits_ptr", "grad_v_ptr")
    bf16 = dict.fromkeys(names, "*bf16")
    bf16_z = {"z_ptr": "*bf16", "out_ptr": "*bf16", "grad_ptr": "*bf16", "grad_z_ptr": "*bf16"}
    ints = {"index_ptr": "*i64", "order_ptr": "*i64", "offsets_ptr": "*i64"}
    lprm_cl = {"svc": 1, "soc": 1, "sgc": 1, "sdc": 1, "slw": 1}
    lprm_nchw = {"svw": 1, "sow": 1, "sgw": 1, "sdw": 1, "slw": 1}
    gather_cl = {"szc": 1, "soc": 1, "sgc": 1, "sdc": 1, "sit": 1, "swt": 1, "sdt": 1}
    gather_nchw = {"szw": 1, "sow": 1, "sgw": 1, "sdw": 1, "sit": 1, "swt": 1, "sdt": 1}
    flat = {"FLAT_Z": True, "FLAT_OUT": True, "FLAT_GRAD": True, "FLAT_DZ": True, "TAPS": 4}
    rasterize = {"spw": 1, "NO_OWNER": 2**31 - 1}
    return [
        ("lprm forward bf16 channels-last", lprm._lprm_forward_kernel, bf16, lprm_cl),
        ("lprm forward fp32 NCHW", lprm._lprm_forward_kernel, {}, lprm_nchw),
        *[
            (f"lprm grad_logits {name}", lprm._lprm_grad_logits_kernel, pointers,
             {**layout, "NEED_LOGITS": True})
            for name, pointers, layout in [("bf16 channels-last", bf16, lprm_cl),
                                           ("fp32 NCHW", {}, lprm_nchw)]
        ],
        *[
            (f"lprm grad_v {name}", lprm._lprm_grad_v_kernel, pointers,
             {**layout, "SPAN": lprm._SPAN})
            for name, pointers, layout in [("bf16 channels-last", bf16, lprm_cl),
                                           ("fp32 NCHW", {}, lprm_nchw)]
        ],
        *[
            (f"gather {part} {name}", kernel, {**pointers, **ints}, {**layout, **flat})
            for part, kernel in [
                ("forward", nonuniform._gather_forward_kernel),
                ("grad_weights", nonuniform._gather_grad_weights_kernel),
                ("grad_z", nonuniform._gather_grad_z_kernel),
            ]
            for name, pointers, layout in [("bf16 channels-last", bf16_z, gather_cl),
                                           ("fp32 NCHW", {}, gather_nchw)]
        ],
        (
            "rasterize owner",
            nonuniform._owner_kernel,
            {"owner_ptr": "*i32"},
            {**rasterize, "BLOCK_T": nonuniform._OWNER_BLOCK_T,
             "BLOCK_S": nonuniform._OWNER_BLOCK_S},
        ),
        (
            "rasterize quad owner",
            nonuniform._quad_owner_kernel,
            {"owner_ptr": "*i32"},
            {**rasterize, "MIN_DET": 1e-12, "TOL": 1e-9, "BLOCK_T": nonuniform._OWNER_BLOCK_T,
             "BLOCK_S": nonuniform._QUAD_OWNER_BLOCK_S},
        ),
        (
            "rasterize quad weights",
            nonuniform._quad_weights_kernel,
            {"owner_ptr": "*i32", "index_ptr": "*i64", "missing_ptr": "*i64",
             "missing_count_ptr": "*i32"},
            {**rasterize, "BLOCK": nonuniform._PIXEL_BLOCK},
        ),
        (
            "rasterize weights",
            nonuniform._weights_kernel,
            {"owner_ptr": "*i32", "index_ptr": "*i64", "missing_ptr": "*i64",
             "missing_count_ptr": "*i32"},
            {**rasterize, "BLOCK": nonuniform._PIXEL_BLOCK},
        ),
        (
            "rasterize chunk bounds",
            nonuniform._chunk_bounds_kernel,
            {"bounds_ptr": "*fp64"},
            {**rasterize, "BLOCK_L": nonuniform._NEAREST_BLOCK_L},
        ),
        (
            "rasterize nearest",
            nonuniform._nearest_kernel,
            {"bounds_ptr": "*fp64", "index_ptr": "*i64", "missing_ptr": "*i64",
             "missing_count_ptr": "*i32"},
            {**rasterize, "TAPS": 4, "BLOCK_U": nonuniform._NEAREST_BLOCK_U,
             "BLOCK_L": nonuniform._NEAREST_BLOCK_L},
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    compile_all(cases())
