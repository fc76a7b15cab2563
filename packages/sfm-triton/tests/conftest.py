"""Settings shared by the sfm-triton tests.

* Where kernels run: on CUDA, or on the CPU when ``TRITON_INTERPRET=1`` was set before import (the
  ``tests-triton`` nox session sets it). Without either, kernel tests skip with that reason, except
  inside a session that sets ``SFM_TRITON_REQUIRE_RUNTIME=1``: there a skip would hide every test,
  so the run fails instead.
* Tolerances: one table per dtype, :data:`sfm_triton.testing.TOLERANCES` (importable from tests,
  root tests and benchmarks alike); the ``assert_close`` fixture applies it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from sfm_triton.testing import assert_close as _assert_close

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
RUNTIME_REASON = (
    None
    if INTERPRET or torch.cuda.is_available()
    else "needs a CUDA device or TRITON_INTERPRET=1 (set before import)"
)

if RUNTIME_REASON is not None and os.environ.get("SFM_TRITON_REQUIRE_RUNTIME") == "1":
    raise pytest.UsageError(
        f"SFM_TRITON_REQUIRE_RUNTIME=1 but the kernels cannot run: {RUNTIME_REASON}"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_runtime: the test runs without CUDA and without the Triton interpreter"
    )


GPU_REASON = (
    "needs a CUDA device"
    if not torch.cuda.is_available()
    else "runs compiled kernels: unset TRITON_INTERPRET"
    if INTERPRET
    else None
)


# torch>=2.15's opcheck reads ``.grad`` of its own non-leaf clones of the inputs while faking them
# (torch/_subclasses/meta_utils.py), which warns; the op under test plays no part in it.
OPCHECK_OWN_WARNING = pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor is being accessed:UserWarning"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests without a GPU (or under the interpreter), and every kernel test (all but
    ``no_runtime`` ones) when no runtime is available; let opcheck tests tolerate torch's own
    warning (:data:`OPCHECK_OWN_WARNING`)."""
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.path).startswith(here):
            continue
        if "opcheck" in item.name:
            item.add_marker(OPCHECK_OWN_WARNING)
        if item.get_closest_marker("gpu") is not None and GPU_REASON is not None:
            item.add_marker(pytest.mark.skip(reason=GPU_REASON))
        elif RUNTIME_REASON is not None and item.get_closest_marker("no_runtime") is None:
            item.add_marker(pytest.mark.skip(reason=RUNTIME_REASON))


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests put their tensors: CPU under the interpreter, else the GPU."""
    return torch.device("cpu" if INTERPRET else "cuda")


@pytest.fixture
def assert_close() -> Callable[..., None]:
    """Compare with the tolerance of the expected tensor's dtype."""
    return _assert_close
