"""Training that a kill cannot change: a resumed run ends where the uninterrupted one would.

detectron2 0.6's ``DefaultTrainer`` resumes the weights, the iteration and the LR schedule, but
(measured) not the optimizer state (its checkpoint holds no AdamW moments), and its data stream
and random state restart from the beginning. :class:`ResumableTrainerMixin` adds:

* the optimizer state in the checkpoint (``trainer._trainer``);
* a data stream that resumes at its position: sample ``p`` of the global stream (all workers
  together) is the same image whether the run was interrupted or not;
* batches that do not depend on ``DATALOADER.NUM_WORKERS``: batch ``j`` of a process is always its
  ``j``-th run of consecutive stream samples (:class:`ResumableStream` hands whole batches to the
  loader workers, instead of detectron2's per-sample or per-chunk worker sharding);
* aspect-ratio grouping that resumes too: with ``DATALOADER.ASPECT_RATIO_GROUPING`` (detectron2's
  default) each process groups its stream into landscape / portrait batches the way detectron2's
  ``AspectRatioGroupedDataset`` does, but from the records' sizes, before mapping. On resume the
  grouping is replayed over the indices from the start (no image is read), so the half-filled
  groups are restored exactly;
* randomness tied to that position, not to history: each sample's augmentation is seeded from
  ``(SEED, p)`` and each iteration's model randomness from ``(SEED, iteration, rank)``. So a
  resumed run, and a run on another number of processes (same total batch, no grouping), draw the
  same flips and crops for the same images;
* :class:`~sfm_d2.engine.checkpointer.SFMCheckpointer` (atomic, verified, safe loading).

Exactness holds with ``DATALOADER.NUM_WORKERS`` any value, grouping on or off, and ``cfg.SEED >=
0``. It works on detectron2 0.6 and on its main branch (where the trainer's loader iterator is
read-only and ``SimpleTrainer.reset_data_loader`` replaces the loader).
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from sfm_d2.data.validation import _oriented_size
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

    def positions(self) -> Iterator[tuple[int, int]]:
        """This worker's ``(global position, dataset index)`` pairs, from ``start``; no seeding."""
        first = self.start + self._rank
        stream = itertools.islice(self._infinite_indices(), first, None, self._world_size)
        return zip(itertools.count(first, self._world_size), stream)

    def __iter__(self) -> Iterator[int]:
        for position, index in self.positions():
            seed_everything(derived_seed(self._seed, position))
            yield index


def grouped_batches(
    items: Iterator[tuple[int, int]], group_of: Any, batch_size: int, skip: int = 0
) -> Iterator[list[tuple[int, int]]]:
    """detectron2's aspect-ratio grouping over ``(position, index)`` pairs, after ``skip`` batches.

    Each item goes to the bucket ``group_of(index)``; a bucket that reaches ``batch_size`` items
    becomes the next batch (``AspectRatioGroupedDataset``'s rule). The first ``skip`` batches are
    computed and dropped, so the buckets then hold what they held after that many batches.
    """
    buckets: dict[int, list[tuple[int, int]]] = {}
    emitted = 0
    for item in items:
        bucket = buckets.setdefault(group_of(item[1]), [])
        bucket.append(item)
        if len(bucket) == batch_size:
            batch = bucket[:]
            bucket.clear()
            emitted += 1
            if emitted > skip:
                yield batch


class RecordOrientation:
    """0 for a landscape record (width > height), 1 otherwise: ``AspectRatioGroupedDataset``'s
    buckets. Sizes come from the record's ``width``/``height`` (what the mapper passes on), else
    from the image file's header (what the mapper would set from the decoded image)."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        self._records = records
        self._cache: dict[int, int] = {}

    def __call__(self, index: int) -> int:
        if index not in self._cache:
            record = self._records[index]
            if "width" in record and "height" in record:
                width, height = record["width"], record["height"]
            else:
                with Image.open(record["file_name"]) as image:
                    width, height = _oriented_size(image)
            self._cache[index] = 0 if width > height else 1
        return self._cache[index]


class ResumableStream(IterableDataset):  # type: ignore[type-arg]
    """The records of one process's batches, each sample seeded by its stream position.

    Batch ``j`` is the ``j``-th run of ``batch_size`` consecutive items of the sampler's stream
    (after :func:`grouped_batches` when ``group_of`` is given, skipping ``skip`` batches); a
    DataLoader worker ``w`` of ``n`` yields batches ``w, w + n, ...``. A DataLoader with
    ``batch_size`` and in-order round robin over its workers then returns batch ``j`` ``j``-th,
    for any number of workers. The seeding happens right before a record is yielded, so the
    mapper that follows draws from it.
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        sampler: ResumableTrainingSampler,
        batch_size: int,
        *,
        group_of: Any = None,
        skip: int = 0,
    ) -> None:
        self.records = records
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_of = group_of
        self.skip = skip

    def batches(self) -> Iterator[list[tuple[int, int]]]:
        """This process's batches of ``(position, index)``."""
        items = self.sampler.positions()
        if self.group_of is not None:
            return grouped_batches(items, self.group_of, self.batch_size, self.skip)
        chunks = iter(lambda: list(itertools.islice(items, self.batch_size)), [])
        return itertools.islice(chunks, self.skip, None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        batches = itertools.islice(self.batches(), worker_id, None, workers)
        for batch in batches:
            for position, index in batch:
                seed_everything(derived_seed(self.sampler._seed, position))
                yield self.records[index]


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
        records = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        total = cfg.SOLVER.IMS_PER_BATCH
        world_size = comm.get_world_size()
        if total <= 0 or total % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the number of "
                f"processes ({world_size})"
            )
        batch_size = total // world_size
        if cfg.DATALOADER.ASPECT_RATIO_GROUPING:  # replay the grouping from the start
            sampler = ResumableTrainingSampler(len(records), seed=base_seed(cfg))
            stream = ResumableStream(
                DatasetFromList(records, copy=False),
                sampler,
                batch_size,
                group_of=RecordOrientation(records),
                skip=start_iter,
            )
        else:
            sampler = ResumableTrainingSampler(
                len(records), seed=base_seed(cfg), start=start_iter * total
            )
            stream = ResumableStream(DatasetFromList(records, copy=False), sampler, batch_size)
        # Explicit arguments, not cfg (0.6's from_config would build a sampler for the stream);
        # the stream is grouped already: detectron2's grouping would regroup it.
        return build_detection_train_loader(
            stream,
            mapper=mapper,
            total_batch_size=total,
            aspect_ratio_grouping=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

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
            build = functools.partial(
                self.build_train_loader,  # type: ignore[attr-defined]
                self.cfg,
                start_iter=self.start_iter,
            )
            if hasattr(self._trainer, "reset_data_loader"):  # detectron2 after 0.6
                self._trainer.reset_data_loader(build)
            else:  # 0.6: the iterator is a plain attribute, made in __init__
                self._trainer.data_loader = build()
                self._trainer._data_loader_iter = iter(self._trainer.data_loader)

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
