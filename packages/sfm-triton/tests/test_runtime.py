"""Where kernels may run and the argument checks every op shares (no kernel launches here)."""

from __future__ import annotations

import pytest
import torch
import triton

from sfm_triton import _runtime

pytestmark = pytest.mark.no_runtime


def test_autotune_configs_collapse_to_the_first_under_the_interpreter() -> None:
    configs = [triton.Config({"BLOCK": 16}, num_warps=4), triton.Config({"BLOCK": 64}, num_warps=8)]
    chosen = _runtime.autotune_configs(configs)
    assert chosen == (configs[:1] if _runtime.INTERPRET else configs)


def test_autotune_configs_refuse_an_empty_list() -> None:
    with pytest.raises(ValueError, match="configs must not be empty"):
        _runtime.autotune_configs([])


def test_cpu_is_allowed_exactly_under_the_interpreter() -> None:
    reason = _runtime.device_reason(torch.device("cpu"))
    if _runtime.INTERPRET:
        assert reason is None
    else:
        assert reason is not None
        assert "TRITON_INTERPRET=1" in reason


def test_other_devices_are_refused() -> None:
    reason = _runtime.device_reason(torch.device("meta"))
    assert reason is not None
    assert "not on meta" in reason


def test_check_dtype_names_the_argument() -> None:
    with pytest.raises(TypeError, match=r"x must have dtype float16, bfloat16, float32.*float64"):
        _runtime.check_dtype("x", torch.ones(2, dtype=torch.float64))
    _runtime.check_dtype("x", torch.ones(2, dtype=torch.bfloat16))


def test_check_device_names_both_devices_when_they_differ() -> None:
    with pytest.raises(ValueError, match=r"x on cpu, grid on meta"):
        _runtime.check_device(x=torch.ones(1), grid=torch.ones(1, device="meta"))


def test_cdiv() -> None:
    assert [_runtime.cdiv(n, 4) for n in (1, 4, 5, 8)] == [1, 1, 2, 2]
