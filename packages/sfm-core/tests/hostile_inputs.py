"""Hostile inputs for the property-based tests: odd shapes, dtypes, layouts, values and scalars.

Every example must end in exactly one of two ways (issue 11): a ValueError/TypeError whose message
names the argument and says what was expected ("must"), or a result of the documented shape and
dtype that is finite in every image whose inputs were finite. :func:`outcome` and
:func:`assert_finite_images` judge that; the strategies here build the inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st

# Derandomized and bounded: the same examples on every run, no deadline (CI machines vary).
HOSTILE = settings(derandomize=True, max_examples=40, deadline=None, database=None)
FEW = settings(derandomize=True, max_examples=15, deadline=None, database=None)

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DTYPES = (*FLOATS, torch.int64, torch.bool)
LAYOUTS = ("contiguous", "channels_last", "strided", "expanded")
POISONS = ("none", "none", "nan", "inf", "huge", "tiny")
SIDES = (0, 1, 1, 2, 3, 5)
# Words by which an error message says what was expected.
EXPECTING = ("must", "expected", " not ", "pass ", "needs", "at least", "at most")


@dataclass(frozen=True)
class Spec:
    """How to build one tensor: shape, dtype, memory layout, and the value poisoned into it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str
    poison: str
    seed: int

    def build(self, fill: Callable[[torch.Generator, tuple[int, ...]], torch.Tensor]) -> Any:
        """The tensor: ``fill``'s values, poisoned at one spot, in ``dtype`` and ``layout``."""
        generator = torch.Generator().manual_seed(self.seed)
        data = fill(generator, self.shape).to(torch.float64)
        if data.numel() and self.poison != "none" and self.dtype.is_floating_point:
            spot = int(torch.randint(data.numel(), (1,), generator=generator))
            flat = data.view(-1)
            info = torch.finfo(self.dtype)
            flat[spot] = {
                "nan": float("nan"),
                "inf": -float("inf"),
                "huge": info.max / 8,
                "tiny": info.tiny,
            }[self.poison]
        return lay_out(data.to(self.dtype), self.layout)


def lay_out(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: channels-last, a strided slice, an expansion."""
    if layout == "channels_last" and tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "strided" and tensor.dim() >= 1:
        wide = torch.zeros(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype)
        wide[..., ::2] = tensor
        return wide[..., ::2]
    if layout == "expanded" and tensor.dim() >= 1 and tensor.shape[0] >= 1:
        # A batch that repeats its first image with stride 0 (what .expand gives).
        return tensor[:1].expand(tensor.shape)
    return tensor


def non_finite_images(tensor: torch.Tensor) -> torch.Tensor:
    """Per leading index, whether that slice holds a NaN or infinity."""
    if not tensor.is_floating_point() or tensor.dim() == 0 or tensor.numel() == 0:
        return torch.zeros(tensor.shape[0] if tensor.dim() else 1, dtype=torch.bool)
    return ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)


def normal(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def unit(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Values in (0, 1): positions."""
    return torch.rand(shape, generator=generator, dtype=torch.float64) * 0.98 + 0.01


def grid_values(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Grid coordinates in [-1.5, 1.5]: some outside the map (border padding)."""
    return torch.rand(shape, generator=generator, dtype=torch.float64) * 3 - 1.5


@st.composite
def specs(
    draw: st.DrawFn,
    shape: Sequence[int | None],
    *,
    dtypes: Sequence[torch.dtype] = DTYPES,
    rank_change: bool = True,
) -> Spec:
    """A tensor spec of ``shape`` (``None`` entries drawn from :data:`SIDES`), sometimes the wrong
    rank, with a drawn dtype, layout and poison."""
    dims = [draw(st.sampled_from(SIDES)) if size is None else size for size in shape]
    if rank_change and draw(st.integers(0, 9)) == 0:
        dims = dims[:-1] if draw(st.booleans()) else [*dims, 1]
    weights = [8 if d in (torch.float32,) else 1 for d in dtypes]
    dtype = draw(
        st.sampled_from([d for d, w in zip(dtypes, weights, strict=True) for _ in range(w)])
    )
    return Spec(
        tuple(dims),
        dtype,
        draw(st.sampled_from(LAYOUTS)),
        draw(st.sampled_from(POISONS)),
        draw(st.integers(0, 2**16)),
    )


def bad_scalars() -> st.SearchStrategy[Any]:
    """Scalars no argument should take: wrong types, non-finite, huge, zero, negative."""
    return st.sampled_from(
        [
            None,
            True,
            "3",
            [3],
            float("nan"),
            float("inf"),
            -1,
            0,
            0.0,
            10**30,
            1e-300,
            np.int64(3),
            2.5,
        ]
    )


def scalar(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes a hostile one."""
    return st.one_of(valid, valid, valid, bad_scalars())


def outcome(call: Callable[[], Any], names: Sequence[str]) -> Any:
    """Run ``call``: its result, or ``None`` after a ValueError/TypeError that names an argument.

    Any other exception fails the test, as does an error message naming none of ``names`` or
    not saying what was expected (:data:`EXPECTING`).
    """
    try:
        return call()
    except (ValueError, TypeError) as error:
        message = str(error)
        assert any(name in message for name in names), f"names no argument: {message}"
        assert any(word in message for word in EXPECTING), f"says nothing expected: {message}"
        return None


def assert_result(
    result: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, broken: torch.Tensor
) -> None:
    """``result`` has ``shape`` and ``dtype`` and is finite in every image not in ``broken``."""
    assert isinstance(result, torch.Tensor)
    assert tuple(result.shape) == tuple(shape), (tuple(result.shape), tuple(shape))
    assert result.dtype == dtype, (result.dtype, dtype)
    assert_finite_images(result, broken)


def assert_finite_images(result: torch.Tensor, broken: torch.Tensor) -> None:
    """Every image of ``result`` (leading index) not marked ``broken`` is finite."""
    if result.numel() == 0:
        return
    finite = torch.isfinite(result.reshape(result.shape[0], -1)).all(dim=1)
    clean = ~broken.to(finite.device)
    assert bool(finite[clean].all()), f"non-finite output in clean images {(~finite & clean)}"
