"""Evaluation: confusion, region metrics and boundary IoU against cases worked out by hand, the
detectron2 evaluator on PNG ground truth, and a 2-process gather equal to 1 process."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import SemSegEvaluator, inference_on_dataset
from PIL import Image

from sfm_d2.data.finedetail import CLASSES as FD_CLASSES
from sfm_d2.data.finedetail import register_finedetail
from sfm_d2.evaluation import (
    SFMSemSegEvaluator,
    boundary_band,
    boundary_iou,
    boundary_statistics,
    confusion_matrix,
    region_scores,
    sem_seg_results,
)

from . import processes

IGN = 255  # the ignore label
SCRIPT = Path(__file__).parent / "evaluator_gather.py"
# A limit for a loaded machine: the script took 113.6 s there (120 s was the old limit).
GATHER_TIMEOUT_S = 600

# 3x3 case: class 3 is absent from both maps (predicted only on an ignored pixel).
GT_3X3 = [[0, 0, 1], [1, IGN, 2], [2, 2, IGN]]
PRED_3X3 = [[0, 1, 1], [1, 0, 2], [0, 2, 3]]
# The 7 valid pixels (gt -> pred): 0->0, 0->1, 1->1, 1->1, 2->2, 2->0, 2->2.
CONFUSION_3X3 = [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]


def t(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def test_confusion_matrix_by_hand() -> None:
    confusion = confusion_matrix(t(PRED_3X3), t(GT_3X3), num_classes=4)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == CONFUSION_3X3


def test_region_scores_by_hand() -> None:
    scores = region_scores(t(CONFUSION_3X3))
    # IoU = TP / (GT + pred - TP): 1/(2+2-1), 2/(2+3-2), 2/(3+2-2), class 3 absent -> NaN
    assert scores.iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert math.isnan(scores.iou[3])
    assert scores.acc[:3].tolist() == pytest.approx([1 / 2, 2 / 2, 2 / 3])
    assert math.isnan(scores.acc[3])
    assert scores.miou == pytest.approx(5 / 9)
    assert scores.macc == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert scores.pacc == pytest.approx(5 / 7)
    assert scores.fwiou == pytest.approx((2 * 1 / 3 + 2 * 2 / 3 + 3 * 2 / 3) / 7)


def test_a_class_predicted_but_absent_from_gt_scores_zero_iou() -> None:
    gt = t([[0, 0, 0, 0]])
    pred = t([[0, 0, 1, 1]])
    scores = region_scores(confusion_matrix(pred, gt, num_classes=3))
    assert scores.iou.tolist()[:2] == [0.5, 0.0]
    assert math.isnan(scores.iou[2])
    assert scores.acc.tolist()[0] == 0.5
    assert math.isnan(scores.acc[1])  # no ground truth: accuracy undefined
    assert scores.miou == pytest.approx(0.25)  # as detectron2's mIoU: (0.5 + 0) / 2


def test_label_maps_are_checked() -> None:
    with pytest.raises(ValueError, match=r"gt must hold class ids in \[0, 4\) or the ignore"):
        confusion_matrix(t([[0, 1]]), t([[0, 7]]), num_classes=4)
    with pytest.raises(ValueError, match=r"pred must hold class ids in \[0, 4\)"):
        confusion_matrix(t([[0, 4]]), t([[0, 1]]), num_classes=4)
    with pytest.raises(ValueError, match="pred must be a 2-D integer tensor"):
        confusion_matrix(torch.zeros(2, 2), t([[0, 1], [1, 0]]), num_classes=4)
    with pytest.raises(ValueError, match="must have one shape"):
        confusion_matrix(t([[0, 1]]), t([[0], [1]]), num_classes=4)
    with pytest.raises(ValueError, match="width must be a positive int"):
        boundary_statistics(t([[0, 1]]), t([[0, 1]]), num_classes=2, width=0)


def _mask(pixels: set[tuple[int, int]], size: int = 5) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    for row, col in pixels:
        mask[row, col] = True
    return mask


def test_boundary_iou_by_hand() -> None:
    # GT: class 1 is the 3x3 square rows 1-3, cols 1-3 of a 5x5 map; the prediction shifts it
    # right by one, so it touches the right edge of the image (which is not a contour).
    gt = torch.zeros(5, 5, dtype=torch.int64)
    gt[1:4, 1:4] = 1
    pred = torch.zeros(5, 5, dtype=torch.int64)
    pred[1:4, 2:5] = 1
    # Width 1: pixels of a class with an 8-neighbour of another class.
    gt_band_1 = {(1, 1), (1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (3, 3)}
    pred_band_1 = {(1, 2), (1, 3), (1, 4), (2, 2), (3, 2), (3, 3), (3, 4)}  # (2,3), (2,4) inside
    ring = {(r, c) for r in range(5) for c in range(5) if r in (0, 4) or c in (0, 4)}
    gt_band_0 = ring  # every ring pixel touches the square
    pred_band_0 = (
        {(r, 1) for r in range(5)} | {(0, c) for c in (2, 3, 4)} | {(4, c) for c in (2, 3, 4)}
    )
    gt_band, pred_band = boundary_band(gt, width=1), boundary_band(pred, width=1)
    assert torch.equal(gt_band & (gt == 0), _mask(gt_band_0))
    assert torch.equal(gt_band & (gt == 1), _mask(gt_band_1))
    assert torch.equal(pred_band & (pred == 0), _mask(pred_band_0))
    assert torch.equal(pred_band & (pred == 1), _mask(pred_band_1))

    stats = boundary_statistics(pred, gt, num_classes=3, width=1)
    assert stats.tolist() == [[8, 4, 0], [16 + 11 - 8, 8 + 7 - 4, 0]]
    scores = boundary_iou(stats)
    assert scores[:2].tolist() == pytest.approx([8 / 19, 4 / 11])
    assert math.isnan(scores[2])  # class 2 appears nowhere


def test_boundary_width_and_ignored_pixels() -> None:
    # Halves: GT class 0 in cols 0-2, class 1 in cols 3-5; the prediction moves the edge one
    # column right. Pixel (3, 0) is ignored and predicted as class 2, which is then absent.
    gt = torch.zeros(6, 6, dtype=torch.int64)
    gt[:, 3:] = 1
    gt[3, 0] = IGN
    pred = torch.zeros(6, 6, dtype=torch.int64)
    pred[:, 4:] = 1
    pred[3, 0] = 2
    # width 1: GT bands are col 2 / col 3, predicted ones col 3 / col 4: disjoint.
    assert boundary_statistics(pred, gt, 4, width=1).tolist() == [[0, 0, 0, 0], [12, 12, 0, 0]]
    # width 2: GT bands cols 1-2 / 3-4, predicted cols 2-3 / 4-5: each shares one column of 6.
    # The ignored pixel makes no contour: the hole it leaves in the predicted class 0 is not one.
    stats = boundary_statistics(pred, gt, 4, width=2)
    assert stats.tolist() == [[6, 6, 0, 0], [18, 18, 0, 0]]
    results = sem_seg_results(confusion_matrix(pred, gt, 4), stats, ["a", "b", "c", "d"])
    assert results["BoundaryIoU"] == pytest.approx(100 / 3)
    assert math.isnan(results["BoundaryIoU-c"])
    assert math.isnan(results["IoU-c"])
    assert math.isnan(results["IoU-d"])
    # region: GT class 0 has 17 valid pixels, all predicted 0; GT class 1 has 18, of which
    # col 3 (6 pixels) is predicted 0. IoU 0 = 17 / (17 + 23 - 17), IoU 1 = 12 / (18 + 12 - 12).
    assert results["IoU-a"] == pytest.approx(100 * 17 / 23)
    assert results["IoU-b"] == pytest.approx(100 * 12 / 18)


def _band_by_erosion(mask: np.ndarray, unknown: np.ndarray, width: int) -> np.ndarray:
    """The definition, pixel by pixel: in the mask, and some known non-mask pixel in the window."""
    band = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask & ~unknown), strict=True):
        window = np.s_[max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1]
        band[y, x] = (~mask[window] & ~unknown[window]).any()
    return band


@pytest.mark.parametrize("width", [1, 2, 4])
def test_boundary_statistics_follow_the_per_class_definition(width: int) -> None:
    generator = torch.Generator().manual_seed(width)
    coarse = torch.randint(0, 4, (5, 6), generator=generator)
    gt = coarse.repeat_interleave(4, 0).repeat_interleave(3, 1)[:19, :17].clone()
    gt[torch.rand(gt.shape, generator=generator) < 0.05] = IGN
    pred = torch.where(torch.rand(gt.shape, generator=generator) < 0.8, gt, 1)
    pred = torch.where(pred == IGN, 2, pred)
    unknown = (gt == IGN).numpy()
    expected = np.zeros((2, 5), np.int64)
    for c in range(5):
        gt_band = _band_by_erosion((gt == c).numpy(), unknown, width)
        pred_band = _band_by_erosion((pred == c).numpy(), unknown, width)
        expected[:, c] = (gt_band & pred_band).sum(), (gt_band | pred_band).sum()
    assert expected[1, :4].min() > 0
    assert boundary_statistics(pred, gt, 5, width=width).tolist() == expected.tolist()


def test_a_uniform_map_has_no_boundary() -> None:
    gt = torch.ones(4, 4, dtype=torch.int64)
    assert boundary_statistics(gt.clone(), gt, 2, width=2).tolist() == [[0, 0], [0, 0]]


def test_boundary_counts_add_over_images() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randint(0, 3, (2, 7, 9), generator=generator) for _ in range(3)]
    whole_gt = torch.cat([m[0] for m in maps], dim=1)  # side by side, with a column of ignore
    whole_pred = torch.cat([m[1] for m in maps], dim=1)
    separator_gt = torch.full((7, 1), IGN)
    gt = torch.cat([maps[0][0], separator_gt, maps[1][0], separator_gt, maps[2][0]], dim=1)
    pred = torch.cat(
        [maps[0][1], separator_gt * 0, maps[1][1], separator_gt * 0, maps[2][1]], dim=1
    )
    summed = sum(boundary_statistics(m[1], m[0], 3, width=1) for m in maps)
    assert torch.equal(boundary_statistics(pred, gt, 3, width=1), summed)
    assert torch.equal(
        confusion_matrix(whole_pred, whole_gt, 3),
        sum(confusion_matrix(m[1], m[0], 3) for m in maps),
    )


# The detectron2 evaluator --------------------------------------------------------------------

CLASSES = ["sky", "wire", "pole", "absent"]


def _write_case(folder: Path) -> list[dict]:
    """Three ground-truth PNGs (with ignored pixels) and the predictions saved beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(7)
    records = []
    for index, (height, width) in enumerate([(9, 11), (12, 8), (10, 10)]):
        gt = generator.integers(0, 3, (height, width)).astype(np.uint8)
        gt[0, :3] = IGN
        pred = np.where(
            generator.random((height, width)) < 0.7, gt, generator.integers(0, 3, (height, width))
        )
        pred = np.where(gt == IGN, 3, pred).astype(np.int64)  # class 3 only where ignored
        Image.fromarray(gt).save(folder / f"{index}.png")
        np.save(folder / f"{index}_pred.npy", pred)
        records.append(
            {"file_name": f"{index}.jpg", "sem_seg_file_name": str(folder / f"{index}.png")}
        )
    (folder / "records.json").write_text(json.dumps(records))
    return records


def _scores_of(pred: np.ndarray) -> torch.Tensor:
    """One-hot [K, H, W] scores whose argmax is ``pred``, as a model's sem_seg output."""
    return (
        torch.nn.functional.one_hot(torch.from_numpy(pred), len(CLASSES)).permute(2, 0, 1).float()
    )


def _register(name: str, records: list[dict]) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=IGN, evaluator_type="sem_seg")


def _evaluate_in_process(folder: Path, records: list[dict]) -> dict[str, float]:
    _register("sfm_test_eval", records)
    evaluator = SFMSemSegEvaluator("sfm_test_eval", distributed=False, boundary_width=1)
    evaluator.reset()
    for index, record in enumerate(records):
        pred = np.load(folder / f"{index}_pred.npy")
        evaluator.process([record], [{"sem_seg": _scores_of(pred)}])
    results = evaluator.evaluate()
    assert results is not None
    return results["sem_seg"]


def test_evaluator_matches_the_metric_core(tmp_path: Path) -> None:
    records = _write_case(tmp_path)
    results = _evaluate_in_process(tmp_path, records)
    confusion = torch.zeros(4, 4, dtype=torch.int64)
    stats = torch.zeros(2, 4, dtype=torch.int64)
    for index, record in enumerate(records):
        gt = torch.from_numpy(np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64))
        pred = torch.from_numpy(np.load(tmp_path / f"{index}_pred.npy"))
        confusion += confusion_matrix(pred, gt, 4)
        stats += boundary_statistics(pred, gt, 4, width=1)
    assert int(confusion.sum()) == 9 * 11 + 12 * 8 + 10 * 10 - 3 * 3  # ignored pixels dropped
    expected = sem_seg_results(confusion, stats, CLASSES)
    assert results.keys() == expected.keys()
    assert {"mIoU", "fwIoU", "mACC", "pACC", "BoundaryIoU", "IoU-wire", "BoundaryIoU-pole"} <= set(
        results
    )
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, nan_ok=True), key
    assert math.isnan(results["IoU-absent"])
    assert 30.0 < results["mIoU"] < 100.0


def test_evaluator_refuses_mismatched_outputs(tmp_path: Path) -> None:
    records = _write_case(tmp_path)
    _register("sfm_test_eval", records)
    evaluator = SFMSemSegEvaluator("sfm_test_eval", distributed=False)
    evaluator.reset()
    with pytest.raises(ValueError, match=r"outputs\['sem_seg'\] must be \[4, H, W\]"):
        evaluator.process([records[0]], [{"sem_seg": torch.zeros(3, 9, 11)}])
    with pytest.raises(ValueError, match=r"0\.png"):
        evaluator.process([records[0]], [{"sem_seg": torch.zeros(4, 5, 5)}])
    with pytest.raises(ValueError, match=r"no sem_seg_file_name for input elsewhere\.jpg"):
        evaluator.process([{"file_name": "elsewhere.jpg"}], [{"sem_seg": torch.zeros(4, 9, 11)}])
    with pytest.raises(ValueError, match="boundary_width must be a positive int"):
        SFMSemSegEvaluator("sfm_test_eval", boundary_width=0)


def test_two_process_gather_equals_one_process(tmp_path: Path) -> None:
    records = _write_case(tmp_path)
    single = _evaluate_in_process(tmp_path, records)
    done = processes.run([sys.executable, str(SCRIPT), str(tmp_path)], timeout=GATHER_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    gathered = json.loads((tmp_path / "rank0.json").read_text())
    assert (
        json.loads((tmp_path / "rank1.json").read_text()) is None
    )  # only the main process reports
    assert gathered["world_size"] == 2
    assert gathered["sem_seg"].keys() == single.keys()
    for key, value in single.items():
        other = gathered["sem_seg"][key]
        assert (math.isnan(value) and other is None) or other == pytest.approx(value), key


def test_region_metrics_agree_with_detectron2s_evaluator(tmp_path: Path) -> None:
    records = _write_case(tmp_path)
    ours = _evaluate_in_process(tmp_path, records)
    reference = SemSegEvaluator("sfm_test_eval", distributed=False)
    reference.reset()
    for index, record in enumerate(records):
        pred = np.load(tmp_path / f"{index}_pred.npy")
        reference.process([record], [{"sem_seg": _scores_of(pred)}])
    theirs = reference.evaluate()["sem_seg"]
    for key in (
        "mIoU",
        "fwIoU",
        "mACC",
        "pACC",
        *(f"{p}-{c}" for p in ("IoU", "ACC") for c in CLASSES),
    ):
        assert ours[key] == pytest.approx(theirs[key], nan_ok=True), key


class _Oracle(torch.nn.Module):
    """A 'model' that answers with the ground truth (or with background everywhere)."""

    def __init__(self, dataset: str, num_classes: int, background_only: bool = False) -> None:
        super().__init__()
        self.gt_files = {
            r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get(dataset)
        }
        self.num_classes = num_classes
        self.background_only = background_only

    def forward(self, inputs: list[dict]) -> list[dict]:
        outputs = []
        for record in inputs:
            assert "sem_seg_file_name" not in record  # the test-time mapper drops it
            gt = np.asarray(Image.open(self.gt_files[record["file_name"]])).astype(np.int64)
            answer = np.zeros_like(gt) if self.background_only else np.where(gt == IGN, 0, gt)
            scores = torch.nn.functional.one_hot(torch.from_numpy(answer), self.num_classes)
            outputs.append({"sem_seg": scores.permute(2, 0, 1).float()})
        return outputs


def test_finedetail_val_through_detectron2s_loader_and_inference(tmp_path: Path) -> None:
    register_finedetail(tmp_path / "fd", seed=0, size=64, num_train=1, num_val=3)
    cfg = get_cfg()
    cfg.DATALOADER.NUM_WORKERS = 0
    loader = build_detection_test_loader(cfg, "sfm_finedetail_val")
    evaluator = SFMSemSegEvaluator("sfm_finedetail_val", distributed=True, output_dir=str(tmp_path))
    perfect = inference_on_dataset(
        _Oracle("sfm_finedetail_val", len(FD_CLASSES)), loader, evaluator
    )["sem_seg"]
    present = [c for c in FD_CLASSES if not math.isnan(perfect[f"IoU-{c}"])]
    assert len(present) >= 5
    assert all(perfect[f"IoU-{c}"] == 100.0 for c in present)
    assert perfect["mIoU"] == perfect["pACC"] == perfect["BoundaryIoU"] == 100.0
    saved = json.loads((tmp_path / "sem_seg_evaluation.json").read_text())
    assert saved["sem_seg"]["mIoU"] == 100.0
    assert len(saved["confusion_matrix (rows: ground truth, columns: prediction)"]) == 9
    lazy = inference_on_dataset(
        _Oracle("sfm_finedetail_val", len(FD_CLASSES), True), loader, evaluator
    )["sem_seg"]
    assert lazy["mIoU"] == pytest.approx(lazy["IoU-background"] / len(present))
    assert lazy["BoundaryIoU"] == 0.0
