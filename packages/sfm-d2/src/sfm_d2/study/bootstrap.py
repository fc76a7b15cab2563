"""Paired hierarchical bootstrap: an interval for "arm minus baseline" over seeds and images.

The study's runs are nested: base seeds (a pretrained baseline each) → continuation seeds (each
continued once per arm, with the same seed, so the arms of one continuation are paired) → the
validation images (the same for every run). One replicate resamples all three levels with
replacement: K base seeds from the K, for each pick C continuation seeds from its C, for each
pick N images from the N. The arm and the baseline always get the *same* picks (pairing), and a
metric is recomputed from the summed per-image statistics of the picked images (IoU is a ratio
of sums, not a mean of per-image ratios). The replicate's value is the mean over its K x C picks
of metric(arm) - metric(baseline); the interval is the percentile interval of the replicates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
Metric = Callable[[Array], Array]  # summed statistics [..., *S] -> values [...]


@dataclass(frozen=True)
class Interval:
    """Point estimate (mean paired difference over all runs, all images) and its interval."""

    estimate: float
    low: float
    high: float
    level: float
    replicates: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def _check_runs(name: str, value: object) -> Array:
    if not isinstance(value, np.ndarray) or value.ndim < 3 or min(value.shape[:3]) < 1:
        raise ValueError(
            f"{name} must be an array [base seeds, continuation seeds, images, ...] with at least "
            f"one of each, got {getattr(value, 'shape', type(value).__name__)}"
        )
    return value


def paired_difference(arm: Array, base: Array, metric: Metric) -> Array:
    """metric(arm) - metric(base) per run ``[K, C]``, each on the sum over all its images."""
    return np.asarray(metric(arm.sum(axis=2)) - metric(base.sum(axis=2)), dtype=np.float64)


def hierarchical_bootstrap(
    arm: Array,
    base: Array,
    metric: Metric,
    *,
    replicates: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 250,
) -> Interval:
    """Percentile interval of mean(metric(arm) - metric(base)) under the nested resampling above.

    Args:
        arm, base: per-image statistics ``[K, C, N, *S]`` (base seed, continuation seed, image,
            then whatever ``metric`` sums, e.g. ``[2, classes]`` intersections and unions); the
            same shape, run ``[k, c]`` of both continued from the same base with the same seed.
        metric: summed statistics ``[..., *S]`` -> values ``[...]`` (vectorised over leading axes).
        replicates, level, seed: bootstrap size, interval coverage, random seed.
        chunk: replicates computed at once (bounds memory).
    """
    arm, base = _check_runs("arm", arm), _check_runs("base", base)
    if arm.shape != base.shape:
        raise ValueError(f"arm and base must have one shape, got {arm.shape} and {base.shape}")
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"replicates must be a positive int, got {replicates!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    num_base, num_cont, num_images = arm.shape[:3]
    rng = np.random.default_rng(seed)
    values = []
    flat_arm = arm.reshape(num_base, num_cont, num_images, -1).astype(np.float64)
    flat_base = base.reshape(num_base, num_cont, num_images, -1).astype(np.float64)
    rest = arm.shape[3:]
    for start in range(0, replicates, chunk):
        count = min(chunk, replicates - start)
        picked_base = rng.integers(num_base, size=(count, num_base))
        picked_cont = rng.integers(num_cont, size=(count, num_base, num_cont))
        weights = rng.multinomial(
            num_images, np.full(num_images, 1.0 / num_images), size=(count, num_base, num_cont)
        ).astype(np.float64)  # image picks as counts: the same for arm and base
        rows = picked_base[:, :, None]
        # [count, K, C, N, S] -> weighted sums over images [count, K, C, S]
        summed_arm = np.einsum("rkcn,rkcns->rkcs", weights, flat_arm[rows, picked_cont])
        summed_base = np.einsum("rkcn,rkcns->rkcs", weights, flat_base[rows, picked_cont])
        shape = (count, num_base, num_cont, *rest)
        difference = metric(summed_arm.reshape(shape)) - metric(summed_base.reshape(shape))
        values.append(np.asarray(difference, dtype=np.float64).mean(axis=(1, 2)))
    samples = np.concatenate(values)
    tail = (1 - level) / 2
    finite = samples[np.isfinite(samples)]
    low, high = (
        np.quantile(finite, [tail, 1 - tail]) if finite.size else (float("nan"), float("nan"))
    )
    estimate = float(paired_difference(arm, base, metric).mean())
    return Interval(estimate, float(low), float(high), level, replicates)
