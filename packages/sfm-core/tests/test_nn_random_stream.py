"""own_random_stream: SFM modules draw from a stream of their own and leave the global one as is."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sfm_core.nn import AdaptiveResampling, own_random_stream, stream_seed


def test_the_global_state_after_the_block_is_the_state_before_it() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with own_random_stream("ars.res3"):
        AdaptiveResampling(16)
        torch.rand(100)
    assert torch.equal(torch.get_rng_state(), before)
    # ... so what follows draws what it would have drawn without the block.
    after_block = nn.Linear(8, 8).weight
    torch.manual_seed(0)
    torch.testing.assert_close(nn.Linear(8, 8).weight, after_block, rtol=0, atol=0)


def test_the_stream_depends_on_the_global_state_and_the_name() -> None:
    def draw(seed: int, name: str) -> torch.Tensor:
        torch.manual_seed(seed)
        with own_random_stream(name):
            return torch.rand(4)

    assert torch.equal(draw(0, "a"), draw(0, "a"))
    assert not torch.equal(draw(0, "a"), draw(0, "b"))
    assert not torch.equal(draw(0, "a"), draw(1, "a"))
    # Not the global stream itself: the block does not draw what the global generator would.
    torch.manual_seed(0)
    assert not torch.equal(draw(0, "a"), torch.rand(4))


def test_the_yielded_seed_is_stream_seed_and_reading_it_draws_nothing() -> None:
    torch.manual_seed(3)
    state = torch.get_rng_state()
    seed = stream_seed("x")
    assert torch.equal(torch.get_rng_state(), state)
    assert 0 <= seed < 2**63
    with own_random_stream("x") as used:
        assert used == seed
        assert torch.initial_seed() == seed


def test_the_state_is_restored_when_the_block_raises() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()

    def fail() -> None:
        with own_random_stream("ars"):
            torch.rand(10)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", ["", None, 3])
def test_a_bad_name_is_refused(name: object) -> None:
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        stream_seed(name)  # type: ignore[arg-type]
