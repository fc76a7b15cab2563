"""What the ARS sites did in the last forward call, and where every map's pixels sit (METHOD.md §2).

During a call the sites only record references (their grid and logits); composite positions are
composed when :meth:`Recorder.trace` is asked for them, so a forward pays nothing for them and
``torch.jit.trace`` / ``torch.compile`` see no bookkeeping ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from sfm_core.functional.positions import compose_positions, identity_positions, resize_positions


class SiteTrace(NamedTuple):
    """One ARS site of one forward call."""

    name: str  # the site module's name in the model
    grid: torch.Tensor  # [B, h, w, 2] sampling grid, attached to the graph (for losses on it)
    positions: torch.Tensor  # [B, 2, h, w] image positions of the map after ARS (detached)
    logits: torch.Tensor  # [B, 1, h, w] attention logits, for the edge-guidance loss


class Trace(NamedTuple):
    """The sites of the last call in execution order, and the positions of every output map.

    ``levels`` has the structure of the model's output (a list for timm's ``features_only``, a
    dict for torchvision's ``IntermediateLayerGetter``, ...) with each 4-D map replaced by its
    positions ``[B, 2, h, w]`` (the positions of the last site it depends on, resized to its size;
    the uniform lattice before the first site) and every other leaf by ``None``. ``levels`` is
    ``None`` when the output has no leaf structure the dry run saw (or no wrapper call ran).
    4-D maps are read in the sites' layout.
    """

    sites: tuple[SiteTrace, ...]
    levels: Any


@dataclass
class _Site:
    name: str
    grid: torch.Tensor
    logits: torch.Tensor


@dataclass
class Recorder:
    """Per-call records of one wrapped model (lives on the wrapper, replaced at every call)."""

    layout: str
    level_sites: list[str | None]  # per flattened output leaf, from the dry run
    image: torch.Tensor | None = None  # the call's image batch; None: entered below the wrapper
    sites: list[_Site] = field(default_factory=list)
    output: Any = None
    open: bool = False
    cached: Trace | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> Recorder:
        """A copy of a model starts with no record (records hold graph tensors, not state)."""
        return Recorder(self.layout, list(self.level_sites))

    def begin(self, image: torch.Tensor) -> None:
        self.image, self.sites, self.output, self.open, self.cached = image, [], None, True, None

    def end(self, output: Any) -> None:
        self.output, self.open = output, False

    def close(self) -> None:
        self.open = False

    def record(self, name: str, grid: torch.Tensor, logits: torch.Tensor) -> None:
        """A site ran. Outside a wrapper call (e.g. timm's ``forward_features``) a site seen
        again starts a new record, whose positions start at the first site's own lattice."""
        if any(site.name == name for site in self.sites):
            if self.open:
                raise RuntimeError(
                    f"module {name!r} ran twice in one forward; ARS sites must run once"
                )
            self.image, self.sites, self.output = None, [], None
        self.sites.append(_Site(name, grid, logits))
        self.cached = None

    def trace(self) -> Trace:
        """The :class:`Trace` of the last call (composed once, then cached)."""
        if self.cached is None:
            self.cached = self._compose()
        return self.cached

    def _dtype(self, reference: torch.Tensor) -> torch.dtype:
        source = self.image if self.image is not None else reference
        if source.is_floating_point():
            return torch.promote_types(source.dtype, torch.float32)
        return torch.float32

    def _compose(self) -> Trace:
        traced: list[SiteTrace] = []
        previous: torch.Tensor | None = None
        for site in self.sites:
            grid = site.grid
            dtype = self._dtype(grid)
            if previous is None:
                size = self.image.shape[-2:] if self.image is not None else grid.shape[1:3]
                previous = identity_positions(
                    int(grid.shape[0]), int(size[0]), int(size[1]), device=grid.device, dtype=dtype
                )
            previous = compose_positions(previous, grid)
            traced.append(SiteTrace(site.name, grid, previous, site.logits))
        return Trace(tuple(traced), self._levels(traced))

    def _levels(self, traced: list[SiteTrace]) -> Any:
        if self.output is None:
            return None
        leaves, spec = tree_flatten(self.output)
        if len(leaves) != len(self.level_sites):
            return None  # not the structure the dry run saw: which site precedes what is unknown
        by_name = {site.name: site.positions for site in traced}
        levels = [
            self._level(leaf, by_name.get(name) if name is not None else None)
            for leaf, name in zip(leaves, self.level_sites, strict=True)
        ]
        return tree_unflatten(levels, spec)

    def _level(self, leaf: object, positions: torch.Tensor | None) -> torch.Tensor | None:
        if not isinstance(leaf, torch.Tensor) or leaf.dim() != 4:
            return None
        size = leaf.shape[2:] if self.layout == "nchw" else leaf.shape[1:3]
        height, width = int(size[0]), int(size[1])
        if positions is None:
            dtype = self._dtype(leaf)
            return identity_positions(
                int(leaf.shape[0]), height, width, device=leaf.device, dtype=dtype
            )
        return resize_positions(positions, (height, width))
