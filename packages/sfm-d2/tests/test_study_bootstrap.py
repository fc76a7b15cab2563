"""The study's paired hierarchical bootstrap: coverage on synthetic data, pairing, and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from sfm_d2.study import hierarchical_bootstrap, paired_difference
from sfm_d2.study.scores import class_mean_iou, image_statistics, metric_functions


def mean_metric(summed: np.ndarray) -> np.ndarray:
    """Statistics [..., 2] = (sum of values, count): their mean."""
    return summed[..., 0] / summed[..., 1]


def synthetic(
    rng: np.random.Generator, effect: float, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Base and arm per-image values with seed-level, run-level and image-level noise.

    The arm differs from its paired base run by ``effect`` plus its own base-seed, run and image
    noise; images share a difficulty across arms (what pairing cancels).
    """
    k, c, n = shape
    difficulty = rng.normal(0, 3.0, n)  # the same images in every run
    base = rng.normal(0, 1.0, (k, 1, 1)) + rng.normal(0, 1.0, (k, c, 1)) + difficulty
    base = base + rng.normal(0, 0.5, (k, c, n))
    shift = rng.normal(0, 0.4, (k, 1, 1)) + rng.normal(0, 0.4, (k, c, 1))
    arm = base + effect + shift + rng.normal(0, 0.5, (k, c, n))
    ones = np.ones((k, c, n))
    return np.stack([arm, ones], -1), np.stack([base, ones], -1)


def test_coverage_of_the_true_effect_on_synthetic_data() -> None:
    rng = np.random.default_rng(0)
    hits, zero_excluded = 0, 0
    trials = 120
    for trial in range(trials):
        arm, base = synthetic(rng, effect=0.5, shape=(6, 3, 16))
        interval = hierarchical_bootstrap(arm, base, mean_metric, replicates=400, seed=trial)
        # the truth the seeds were drawn around: the effect (seed shifts have mean 0)
        hits += interval.low <= 0.5 <= interval.high
        zero_excluded += interval.excludes_zero
    coverage = hits / trials
    # percentile intervals over 6 base seeds run a little narrow or wide; near 95 % either way
    assert 0.85 <= coverage <= 0.995, coverage
    assert zero_excluded > 0.5 * trials  # and an effect this size is usually detected


def test_null_effect_rarely_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    excluded = sum(
        hierarchical_bootstrap(
            *synthetic(rng, effect=0.0, shape=(6, 3, 16)), mean_metric, replicates=400, seed=t
        ).excludes_zero
        for t in range(100)
    )
    assert excluded <= 15, excluded


def test_pairing_cancels_what_arms_share() -> None:
    rng = np.random.default_rng(2)
    # huge seed and image variance, shared by both arms; the arm is the base plus exactly 0.3
    values = rng.normal(0, 10.0, (3, 2, 20)) + rng.normal(0, 20.0, (3, 1, 1))
    base = np.stack([values, np.ones_like(values)], -1)
    arm = np.stack([values + 0.3, np.ones_like(values)], -1)
    interval = hierarchical_bootstrap(arm, base, mean_metric, replicates=300)
    assert interval.estimate == pytest.approx(0.3)
    assert interval.low == pytest.approx(0.3)
    assert interval.high == pytest.approx(0.3)
    # the same values with the arm's runs swapped between seeds: pairing broken, interval wide
    shuffled = hierarchical_bootstrap(arm[::-1], base, mean_metric, replicates=300)
    assert shuffled.high - shuffled.low > 5.0


def test_ratio_metrics_are_recomputed_from_resampled_sums() -> None:
    # two images: IoU of the sum is 30/40, not the mean of 10/10 and 20/30
    stats = np.array([[10.0, 10.0], [20.0, 30.0]]).reshape(1, 1, 2, 2)
    zero = np.zeros_like(stats)
    zero[..., 1] = 1.0
    difference = paired_difference(stats, zero, mean_metric)
    assert difference.shape == (1, 1)
    assert difference[0, 0] == pytest.approx(30 / 40)


def test_bad_shapes_and_options_are_named() -> None:
    good = np.ones((2, 2, 3, 2))
    with pytest.raises(ValueError, match="arm must be an array"):
        hierarchical_bootstrap(np.ones((2, 3)), good, mean_metric)
    with pytest.raises(ValueError, match="one shape"):
        hierarchical_bootstrap(good, np.ones((2, 2, 4, 2)), mean_metric)
    with pytest.raises(ValueError, match="replicates"):
        hierarchical_bootstrap(good, good, mean_metric, replicates=0)
    with pytest.raises(ValueError, match="level"):
        hierarchical_bootstrap(good, good, mean_metric, level=1.0)


def test_image_statistics_and_metrics() -> None:
    import torch

    gt = torch.zeros(8, 8, dtype=torch.int64)
    gt[:, 4:] = 1
    gt[0, 0] = 255
    pred = gt.clone()
    pred[gt == 255] = 0
    pred[:, 4] = 0  # one column of class 1 lost
    stats = image_statistics(pred, gt, 3)
    assert stats.shape == (2, 2, 3)
    # regions: class 0 I = 31 (ignore pixel dropped), U = 31 + 8; class 1 I = 24, U = 32
    assert stats[0, :, 0].tolist() == [31, 39]
    assert stats[0, :, 1].tolist() == [24, 32]
    assert stats[0, :, 2].tolist() == [0, 0]  # absent: no union, left out of the means
    miou = class_mean_iou(stats[0].astype(float))
    assert miou == pytest.approx(100 * (31 / 39 + 24 / 32) / 2)
    names = ["background", "wire", "x", "pole", "fence"]
    metrics = metric_functions(names)
    assert list(metrics) == ["boundary IoU", "thin-class IoU", "mIoU"]
    summed = np.zeros((2, 2, 5))
    summed[0, :, 1] = [1, 2]  # wire 50 %
    summed[0, :, 4] = [3, 3]  # fence 100 %; pole absent; background (not thin) 0 %
    summed[0, :, 0] = [0, 5]
    assert metrics["thin-class IoU"](summed) == pytest.approx(75.0)
    assert metrics["mIoU"](summed) == pytest.approx(50.0)
    assert np.isnan(metrics["boundary IoU"](summed))  # no boundary union anywhere
