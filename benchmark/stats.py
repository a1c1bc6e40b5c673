"""Confidence intervals and paired tests for per-episode IoU.

Every interval here is a 95% bootstrap interval of a *mean over episodes*:

- one seed: ``scipy.stats.bootstrap`` over episodes, BCa (better coverage than percentile for the
  skewed, bounded IoU distribution);
- several seeds: a two-level (hierarchical) percentile bootstrap -- resample seeds with replacement,
  then episodes with replacement within each drawn seed -- because episodes of one seed share a
  meta-trained model and are not independent draws; the interval then carries between-seed variance.

Degenerate samples are handled explicitly: no observations gives NaN everywhere, one observation a
mean without an interval (NaN bounds), and a constant sample the zero-width interval ``[v, v]`` (BCa
is undefined there). Every resampling uses its own ``numpy`` generator seeded by ``seed``, so the
same data always gives the same interval, whatever order the report computes them in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 9999


class Interval(NamedTuple):
    mean: float
    low: float
    high: float
    n: int  # observations (episodes)
    groups: int  # seeds


def _as_values(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"bootstrap needs finite values; got {np.count_nonzero(~np.isfinite(array))} NaN/inf")
    return array


def flat_ci(values, *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Interval:
    """BCa bootstrap interval of the mean of independent observations (``scipy.stats.bootstrap``)."""
    x = _as_values(values)
    n = x.size
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, float("nan"), float("nan"), 1, 1)
    if np.ptp(x) == 0:
        return Interval(mean, mean, mean, n, 1)
    result = stats.bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
        rng=np.random.default_rng(seed),
    )
    return Interval(mean, float(result.confidence_interval.low), float(result.confidence_interval.high), n, 1)


def hierarchical_ci(
    values, groups, *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> Interval:
    """Two-level percentile bootstrap of the pooled mean: seeds, then episodes within each seed.

    The statistic of a resample is the mean over all resampled episodes (each episode weighs the
    same, as in the point estimate). Works for any number of groups, including one, where it reduces
    to the ordinary percentile bootstrap over episodes.
    """
    x = _as_values(values)
    labels = np.asarray(groups).ravel()
    if labels.size != x.size:
        raise ValueError(f"hierarchical_ci: {x.size} values but {labels.size} group labels")
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    members = [x[labels == g] for g in np.unique(labels)]
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, float("nan"), float("nan"), 1, 1)
    if np.ptp(x) == 0:
        return Interval(mean, mean, mean, x.size, len(members))
    rng = np.random.default_rng(seed)
    sizes = np.array([m.size for m in members])
    drawn = rng.integers(0, len(members), size=(n_resamples, len(members)))  # which seed fills each slot
    sums = np.empty(drawn.shape)
    for g, member in enumerate(members):
        slots = drawn == g
        picks = rng.integers(0, member.size, size=(int(slots.sum()), member.size))
        sums[slots] = member[picks].sum(axis=1)
    resampled = sums.sum(axis=1) / sizes[drawn].sum(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(resampled, [alpha, 1 - alpha])
    return Interval(mean, float(low), float(high), x.size, len(members))


def mean_ci(values, groups=None, **kwargs) -> Interval:
    """The report's interval: flat BCa with one seed (or no labels), hierarchical with several."""
    if groups is None or np.unique(np.asarray(groups)).size <= 1:
        return flat_ci(values, **kwargs)
    return hierarchical_ci(values, groups, **kwargs)


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (``scipy.stats.wilcoxon``).

    Zero differences are dropped (Wilcoxon's convention); when all are zero there is no evidence of
    a difference and p = 1. No pairs gives NaN.
    """
    d = _as_values(differences)
    if d.size == 0:
        return float("nan")
    if not np.any(d):
        return 1.0
    return float(stats.wilcoxon(d).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values; NaN entries are left out of the family.

    Sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j + 1) p_(j)), returned in input order.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1]; got {p[(p < 0) | (p > 1)].tolist()}")
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = present.size
    if m == 0:
        return adjusted
    order = present[np.argsort(p[present], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted
