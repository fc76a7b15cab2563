"""detectron2 evaluator for semantic segmentation: region metrics plus boundary IoU.

Per image it adds the confusion matrix and the boundary counts (int64), so combining processes
is an exact sum (one ``all_reduce``) and the result does not depend on how the images were split
across processes. (detectron2's ``comm.all_gather`` would pickle the same tensors through a
deprecated storage API that warns on current torch.)

With an ``output_dir`` it writes the files of detectron2's ``SemSegEvaluator``:
``sem_seg_predictions.json`` (per image and predicted class, a COCO RLE mask) and
``sem_seg_evaluation.pth`` (the result dict, plain floats: ``torch.load(weights_only=True)`` reads
it), and its own ``sem_seg_evaluation.json`` (results, classes, the confusion matrix).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.distributed as dist
from PIL import Image

import sfm_d2  # noqa: F401  (its compatibility layer runs before detectron2 is imported)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from sfm_d2.evaluation.boundary import boundary_statistics
from sfm_d2.evaluation.confusion import confusion_matrix
from sfm_d2.evaluation.summary import sem_seg_results

logger = logging.getLogger(__name__)


def _concatenate_over_processes(items: list[Any]) -> list[Any]:
    """Every process's ``items``, in rank order (gloo and NCCL alike)."""
    gathered: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return list(itertools.chain.from_iterable(part or [] for part in gathered))


def encode_sem_seg(
    pred: np.ndarray, file_name: str, dataset_ids: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """detectron2's ``sem_seg_predictions.json`` records of one image: per predicted class, its
    ``category_id`` (the dataset's id where the metadata maps one) and a COCO RLE mask."""
    records = []
    for label in np.unique(pred).tolist():
        mask = np.asfortranarray((pred == label).astype(np.uint8)[:, :, None])
        rle = mask_util.encode(mask)[0]
        rle["counts"] = rle["counts"].decode("utf-8")
        category = dataset_ids[label] if dataset_ids is not None else int(label)
        records.append({"file_name": file_name, "category_id": category, "segmentation": rle})
    return records


def _sum_over_processes(*counts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The element-wise sums of int64 ``counts`` over every process (exact: integers)."""
    flat = torch.cat([c.reshape(-1) for c in counts])
    if dist.get_backend() == dist.Backend.NCCL:  # NCCL reduces CUDA tensors only
        flat = flat.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return tuple(
        part.view_as(c).cpu()
        for part, c in zip(flat.split([c.numel() for c in counts]), counts, strict=True)
    )


class SFMSemSegEvaluator(DatasetEvaluator):  # type: ignore[misc]
    """mIoU, fwIoU, mACC, pACC, per-class IoU/ACC and boundary IoU of ``dataset_name``.

    Ground truth comes from the dataset's ``sem_seg_file_name`` at its original size, looked up by
    the input's ``file_name`` (detectron2's test-time mapper drops ``sem_seg_file_name``); the model's
    ``outputs[i]["sem_seg"]`` ([K, H, W] scores) is reduced by argmax. ``boundary_width`` is the
    band width in pixels (see :mod:`sfm_d2.evaluation.boundary`). Like detectron2's evaluators,
    only the main process returns results when ``distributed``; the others return None.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: str | None = None,
        boundary_width: int = 3,
    ) -> None:
        metadata = MetadataCatalog.get(dataset_name)
        classes = metadata.get("stuff_classes")
        if not classes:
            raise ValueError(f"dataset_name {dataset_name!r} has no stuff_classes in its metadata")
        if (
            isinstance(boundary_width, bool)
            or not isinstance(boundary_width, int)
            or boundary_width < 1
        ):
            raise ValueError(
                f"boundary_width must be a positive int (pixels), got {boundary_width!r}"
            )
        self._dataset_name = dataset_name
        self._class_names = list(classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = int(metadata.get("ignore_label", 255))
        self._distributed = distributed
        self._output_dir = output_dir
        self._boundary_width = boundary_width
        self._gt_files: dict[str, str] | None = None  # read from DatasetCatalog when first needed
        to_contiguous = metadata.get("stuff_dataset_id_to_contiguous_id")
        self._dataset_ids = (
            {int(v): int(k) for k, v in to_contiguous.items()} if to_contiguous else None
        )
        self.reset()

    def reset(self) -> None:
        self._confusion = torch.zeros(self._num_classes, self._num_classes, dtype=torch.int64)
        self._boundary = torch.zeros(2, self._num_classes, dtype=torch.int64)
        self._predictions: list[dict[str, Any]] = []  # kept only when there is an output_dir

    def _gt_file_of(self, file_name: str) -> str:
        """The label file of an image, from the dataset's records (the test mapper drops it)."""
        if self._gt_files is None:
            self._gt_files = {
                record["file_name"]: record["sem_seg_file_name"]
                for record in DatasetCatalog.get(self._dataset_name)
                if "sem_seg_file_name" in record
            }
        if file_name not in self._gt_files:
            raise ValueError(f"no sem_seg_file_name for input {file_name} in {self._dataset_name}")
        return self._gt_files[file_name]

    def _read_gt(self, path: str) -> torch.Tensor:
        with PathManager.open(path, "rb") as handle:
            labels = np.array(Image.open(handle), dtype=np.int64)
        if labels.ndim != 2:
            raise ValueError(f"sem_seg_file_name {path} must be a single-channel label image")
        return torch.from_numpy(labels)

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for record, output in zip(inputs, outputs, strict=True):
            scores = output["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"outputs['sem_seg'] must be [{self._num_classes}, H, W] scores, "
                    f"got {tuple(scores.shape)}"
                )
            pred = scores.argmax(dim=0).cpu()
            path = record.get("sem_seg_file_name") or self._gt_file_of(record["file_name"])
            gt = self._read_gt(path)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"prediction {tuple(pred.shape)} and ground truth {path} "
                    f"{tuple(gt.shape)} differ in size"
                )
            try:
                self._confusion += confusion_matrix(pred, gt, self._num_classes, self._ignore_label)
                self._boundary += boundary_statistics(
                    pred, gt, self._num_classes, self._boundary_width, self._ignore_label
                )
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from error
            if self._output_dir:
                self._predictions += encode_sem_seg(
                    pred.numpy(), record["file_name"], self._dataset_ids
                )

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | None:
        confusion, boundary = self._confusion, self._boundary
        predictions = self._predictions
        if self._distributed and comm.get_world_size() > 1:
            confusion, boundary = _sum_over_processes(confusion, boundary)
            if self._output_dir:
                predictions = _concatenate_over_processes(predictions)
            if not comm.is_main_process():
                return None
        results = sem_seg_results(confusion, boundary, self._class_names)
        if self._output_dir:
            self._save(results, confusion, predictions)
        logger.info("%s: %s", self._dataset_name, results)
        return OrderedDict({"sem_seg": results})

    def _save(
        self,
        results: dict[str, float],
        confusion: torch.Tensor,
        predictions: list[dict[str, Any]],
    ) -> None:
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, "sem_seg_predictions.json")
        with PathManager.open(path, "w") as handle:
            json.dump(predictions, handle)
        path = os.path.join(self._output_dir, "sem_seg_evaluation.pth")
        with PathManager.open(path, "wb") as handle:
            torch.save({k: float(v) for k, v in results.items()}, handle)
        record = {
            "dataset": self._dataset_name,
            "boundary_width": self._boundary_width,
            "classes": self._class_names,
            "sem_seg": {k: None if math.isnan(v) else v for k, v in results.items()},
            "confusion_matrix (rows: ground truth, columns: prediction)": confusion.tolist(),
        }
        path = os.path.join(self._output_dir, "sem_seg_evaluation.json")
        with PathManager.open(path, "w") as handle:
            json.dump(record, handle, indent=1)
