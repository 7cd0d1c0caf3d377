"""Statistics over seeds: means with t-based intervals, paired tests against a reference, Pareto fronts.

Seeds are the unit of replication. With the handful of seeds an experiment can
afford, a normal interval would be too narrow, so intervals use Student's t
with n-1 degrees of freedom. Comparisons against the reference method pair
runs by seed (same data order and initialisation), which removes the
seed-to-seed variance both methods share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
# Below six non-zero differences a two-sided exact Wilcoxon test cannot reach p < 0.05 whatever the data, so it
# is not reported. Zero differences do not count: the test (zero_method="wilcox", scipy's default) drops them.
MIN_WILCOXON_PAIRS = 6


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN for a single seed
    n: int
    ci_low: float
    ci_high: float

    @property
    def ci_half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def summarize_seeds(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedSummary:
    """Mean, sample std and the t-based confidence interval of the mean; NaN where n is too small."""
    sample = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(sample)
    if n == 0:
        return SeedSummary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(sample.mean())
    if n == 1:
        return SeedSummary(mean, math.nan, 1, math.nan, math.nan)
    std = float(sample.std(ddof=1))
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return SeedSummary(mean, std, n, mean - half, mean + half)


@dataclass(frozen=True)
class PairedComparison:
    delta: float  # mean of (method - reference) over the seeds both have
    n_pairs: int
    p_ttest: float  # paired t-test, two-sided; NaN below 2 pairs or with zero variance of the differences
    p_wilcoxon: float  # Wilcoxon signed-rank, two-sided; NaN below MIN_WILCOXON_PAIRS non-zero differences


def compare_paired(method_by_seed: dict[int, float], reference_by_seed: dict[int, float]) -> PairedComparison:
    """Method against reference on the seeds both ran with a finite score; other seeds are left out, not imputed."""
    seeds = sorted(
        s
        for s in set(method_by_seed) & set(reference_by_seed)
        if _finite(method_by_seed[s]) and _finite(reference_by_seed[s])
    )
    a = np.asarray([method_by_seed[s] for s in seeds], dtype=float)
    b = np.asarray([reference_by_seed[s] for s in seeds], dtype=float)
    n = len(seeds)
    if n == 0:
        return PairedComparison(math.nan, 0, math.nan, math.nan)
    differences = a - b
    delta = float(differences.mean())
    p_t = math.nan
    if n >= 2 and float(differences.std(ddof=1)) > 0:
        p_t = float(scipy_stats.ttest_rel(a, b).pvalue)
    p_w = math.nan
    if int(np.count_nonzero(differences)) >= MIN_WILCOXON_PAIRS:
        p_w = float(scipy_stats.wilcoxon(a, b, zero_method="wilcox").pvalue)
    return PairedComparison(delta, n, p_t, p_w)


def pareto_front(costs: Sequence[float], qualities: Sequence[float], higher_is_better: bool = True) -> list[bool]:
    """Which points no other point dominates: at most the cost and at least the quality, one strictly.

    Points with a missing cost or quality are never on the front (and never dominate).
    """
    sign = 1.0 if higher_is_better else -1.0
    points = [
        (float(c), sign * float(q)) if _finite(c) and _finite(q) else None
        for c, q in zip(costs, qualities, strict=True)
    ]

    def dominated(i: int) -> bool:
        cost, quality = points[i]
        return any(
            other is not None and other[0] <= cost and other[1] >= quality and (other[0] < cost or other[1] > quality)
            for j, other in enumerate(points)
            if j != i
        )

    return [p is not None and not dominated(i) for i, p in enumerate(points)]


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
