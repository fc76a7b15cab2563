"""A random stream of their own for SFM modules: adding SFM leaves every other draw unchanged.

A paired comparison (a baseline and an SFM model built and trained with the same seed) needs the
parts both models share to start bit-identical and every later draw (drop-path, point sampling,
the data loader's worker seeds) to coincide. SFM modules built inside :func:`own_random_stream`
draw from a generator seeded from the current global state and a name, and the global state is
restored afterwards: the model around them draws exactly what the model without them draws.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_SEED_BITS = 63


def stream_seed(name: str) -> int:
    """The seed :func:`own_random_stream` uses for ``name`` at the current global CPU state.

    A hash of the CPU generator's state and ``name``: the same state and name give the same seed
    (the same seed gives the same model), different names give unrelated streams. Reading the
    state does not advance it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes())
    digest.update(name.encode())
    return int.from_bytes(digest.digest()[:8], "little") >> (64 - _SEED_BITS)


@contextmanager
def own_random_stream(name: str) -> Iterator[int]:
    """Run the block on a generator of its own; restore torch's global generators afterwards.

    Inside, the CPU generator (and the current CUDA device's, once CUDA is initialised) is seeded
    with :func:`stream_seed` of ``name``; on exit they get back the state they had on entry,
    whatever the block drew. Give each module its own ``name`` (e.g. its place in the model):
    two blocks entered at the same global state draw the same numbers only if their names match.
    Python's and NumPy's generators are not touched (module initialisation does not use them).
    Yields the seed.
    """
    seed = stream_seed(name)
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)  # the current device's generator
        yield seed
