"""Training that a kill cannot change: a resumed run ends where the uninterrupted one would.

detectron2 0.6's ``DefaultTrainer`` resumes the weights, the iteration and the LR schedule, but
(measured) not the optimizer state (its checkpoint holds no AdamW moments), and its data stream
and random state restart from the beginning. :class:`ResumableTrainerMixin` adds:

* the optimizer state in the checkpoint (``trainer._trainer``);
* a data stream that resumes at its position: sample ``p`` of the global stream (all workers
  together) is the same image whether the run was interrupted or not;
* randomness tied to that position, not to history: each sample's augmentation is seeded from
  ``(SEED, p)`` and each iteration's model randomness from ``(SEED, iteration, rank)``. So a
  resumed run, and a run on another number of processes (same total batch), draw the same flips
  and crops for the same images;
* :class:`~sfm_d2.engine.checkpointer.SFMCheckpointer` (atomic, verified, safe loading).

Exactness holds with ``DATALOADER.NUM_WORKERS`` any value, ``cfg.SEED >= 0``, and batches that are
consecutive runs of the stream (``DATALOADER.ASPECT_RATIO_GROUPING`` False, or every image of the
same orientation); with mixed orientations grouping reorders within about one batch.
"""

from __future__ import annotations

import itertools
import logging
import random
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

from sfm_d2.engine.checkpointer import SFMCheckpointer

logger = logging.getLogger(__name__)


def derived_seed(*entropy: int) -> int:
    """A 31-bit seed from integers (``SeedSequence``: nearby inputs give unrelated streams)."""
    return int(np.random.SeedSequence([abs(int(e)) for e in entropy]).generate_state(1)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch. Not detectron2's ``seed_all_rng``: that also sets
    ``PYTHONHASHSEED`` in the environment, and glibc keeps every distinct value ever set, so
    calling it for every sample grows the process by ~80 bytes each time (measured)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def base_seed(cfg: CfgNode) -> int:
    """``cfg.SEED`` when set (>= 0), else one random seed shared by every process."""
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


class ResumableTrainingSampler(TrainingSampler):  # type: ignore[misc]
    """detectron2's infinite shuffled stream, started at global position ``start``.

    Worker ``rank`` of ``world_size`` takes positions ``start + rank, start + rank + world_size,
    ...`` (detectron2's sharding). Before yielding each index it seeds Python, numpy and torch
    from ``(seed, position)``, so the mapper's random augmentation of that sample does not depend
    on what ran before it (with ``num_workers == 0`` the mapper runs right after the yield; in a
    loader worker too, as detectron2 runs the sampler inside each worker).
    """

    def __init__(self, size: int, *, seed: int, start: int = 0, shuffle: bool = True) -> None:
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative int, got {start!r}")
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        first = self.start + self._rank
        stream = itertools.islice(self._infinite_indices(), first, None, self._world_size)
        for position, index in zip(itertools.count(first, self._world_size), stream):
            seed_everything(derived_seed(self._seed, position))
            yield index


class SeedEachIteration(HookBase):  # type: ignore[misc]
    """Seeds the model's randomness (drop path, point sampling) from ``(seed, iteration, rank)``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_step(self) -> None:
        seed_everything(derived_seed(self.seed, self.trainer.iter, comm.get_rank(), 1))


class ResumableTrainerMixin:
    """Put before ``DefaultTrainer`` in the bases; build the loader with :meth:`resumable_loader`."""

    cfg: CfgNode
    _trainer: Any
    checkpointer: Any
    start_iter: int

    @classmethod
    def resumable_loader(cls, cfg: CfgNode, mapper: Any, start_iter: int = 0) -> Any:
        """detectron2's train loader over ``DATASETS.TRAIN``, its stream at ``start_iter``."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ValueError(
                "DATALOADER.SAMPLER_TRAIN must be 'TrainingSampler' (the resumable stream), got "
                f"{cfg.DATALOADER.SAMPLER_TRAIN!r}"
            )
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        sampler = ResumableTrainingSampler(
            len(dataset), seed=base_seed(cfg), start=start_iter * cfg.SOLVER.IMS_PER_BATCH
        )
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset, sampler=sampler)

    def build_hooks(self) -> list[HookBase]:
        # Runs inside DefaultTrainer.__init__, after it made its checkpointer: swap that for ours
        # before the PeriodicCheckpointer hook captures it.
        self.checkpointer = SFMCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        hooks: list[HookBase] = super().build_hooks()  # type: ignore[misc]
        return [SeedEachIteration(base_seed(self.cfg)), *hooks]

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)  # type: ignore[misc]
        if self.start_iter > 0:  # the stream continues where the checkpointed run left it
            loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)  # type: ignore[attr-defined]
            self._trainer.data_loader = loader
            self._trainer._data_loader_iter = iter(loader)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = super().state_dict()  # type: ignore[misc]
        state["_trainer"] = self._trainer.state_dict()  # the optimizer (and AMP scaler) state
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("the checkpoint holds no optimizer state: the optimizer starts afresh")
