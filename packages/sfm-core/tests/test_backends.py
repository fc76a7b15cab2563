"""Backend selection of sfm_core.ops: reference by default, plug-ins by entry point."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from sfm_core import backends, ops
from sfm_core import functional as reference


@dataclass
class FakeEntryPoint:
    name: str
    target: object

    def load(self) -> object:
        return self.target


def doubled_resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return 2 * reference.resample(x, grid)


@pytest.fixture
def fake_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[backends.Backend]:
    plugin = backends.Backend(
        name="fake",
        ops={"resample": doubled_resample},
        check=lambda device: None if device.type == "cuda" else "fake needs CUDA",
    )
    monkeypatch.setattr(backends, "entry_points", lambda group: [FakeEntryPoint("fake", plugin)])
    backends.forget_plugins()
    yield plugin
    backends.forget_plugins()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 2, 5, 6), reference.saliency_grid(torch.randn(1, 1, 5, 6))


def test_cpu_tensors_use_the_reference(fake_plugin: backends.Backend) -> None:
    x, grid = inputs()
    torch.testing.assert_close(ops.resample(x, grid), reference.resample(x, grid))


def test_forcing_a_plugin_that_cannot_run_here_is_a_clear_error(
    fake_plugin: backends.Backend,
) -> None:
    x, grid = inputs()
    with pytest.raises(
        RuntimeError, match="'fake' backend cannot run resample on cpu: fake needs CUDA"
    ):
        ops.resample(x, grid, backend="fake")


def test_forcing_a_plugin_runs_it_and_refuses_ops_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = backends.Backend(name="fake", ops={"resample": doubled_resample})
    monkeypatch.setattr(backends, "entry_points", lambda group: [FakeEntryPoint("fake", plugin)])
    backends.forget_plugins()
    try:
        x, grid = inputs()
        forced = ops.resample(x, grid, backend="fake")
        torch.testing.assert_close(forced, 2 * reference.resample(x, grid))
        with pytest.raises(RuntimeError, match="does not implement lprm_aggregate"):
            ops.lprm_aggregate(torch.randn(1, 2, 3, 3), torch.randn(1, 9, 3, 3), 1, backend="fake")
    finally:
        backends.forget_plugins()


def test_environment_variable_selects_the_backend(
    fake_plugin: backends.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, grid = inputs()
    monkeypatch.setenv(backends.BACKEND_ENV, "reference")
    torch.testing.assert_close(ops.resample(x, grid), reference.resample(x, grid))
    monkeypatch.setenv(backends.BACKEND_ENV, "nonsense")
    with pytest.raises(
        ValueError, match=r"SFM_BACKEND must be one of \['auto', 'cpu', 'fake', 'reference'\]"
    ):
        ops.resample(x, grid)


def test_unknown_backend_argument(fake_plugin: backends.Backend) -> None:
    x, grid = inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.resample(x, grid, backend="cuda-magic")


def test_entry_point_must_name_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "entry_points", lambda group: [FakeEntryPoint("bad", object())])
    backends.forget_plugins()
    try:
        with pytest.raises(TypeError, match=r"must name a sfm_core\.backends\.Backend"):
            backends.plugins()
    finally:
        backends.forget_plugins()


def test_every_public_op_matches_the_reference_on_cpu() -> None:
    logits = torch.randn(2, 1, 6, 7)
    torch.testing.assert_close(
        ops.saliency_grid(logits, window=3), reference.saliency_grid(logits, window=3)
    )
    positions = reference.identity_positions(2, 6, 7)
    z = torch.randn(2, 3, 6, 7)
    torch.testing.assert_close(
        ops.nonuniform_upsample(z, positions, (12, 14)),
        reference.nonuniform_upsample(z, positions, (12, 14)),
    )
    r = torch.randn(2, 9, 6, 7)
    torch.testing.assert_close(ops.lprm_aggregate(z, r, 2), reference.lprm_aggregate(z, r, 2))
