"""Confidence intervals and paired tests on the units that vary: held-out test images and seeds.

The report's numbers are means over query crops, but crops are not independent draws: the 40 evaluation
episodes of a line take their crops from a few dozen test images, and with several seeds every seed's
episodes reuse the *same* test images (seeds and images are crossed, not nested). So :func:`mean_ci` takes,
beside each value, its seed, its unit (the query image) and a weight (the crops behind the value), and
estimates the variance of the crop-weighted mean by two delete-one jackknifes, one over images (an image is
left out under every seed) and one over seeds:

    V = V_images + V_seeds,   interval = mean +- t(0.975, df) sqrt(V),
    df by Welch-Satterthwaite: V^2 / (V_images^2 / (images - 1) + V_seeds^2 / (seeds - 1)).

With one seed, V_seeds is not estimable: the interval covers what another draw of test images would give
*for that meta-trained model*, and says nothing about seed-to-seed variation. With equal weights and one seed
it is exactly the one-sample t-interval over per-image means. The same t gives the p-value of "mean = 0",
which for paired differences is the paired test. Why not a bootstrap: a percentile bootstrap over 3 seeds
cannot reach 95% (it knows nothing of the t law's heavy tails at 2 degrees of freedom), and resampling images
within seeds misses the image variance the seeds share. What the interval leaves out: test images serve as
support images too, and that route (which support set an episode drew) is not a unit here; cluster-robust
estimates over both roles collapse, since most episodes share an image. Coverage of every candidate, with
and without that route, measured by simulation: :mod:`benchmark.coverage`, docs/statistics.md.

Degenerate samples are explicit: no values give NaN everywhere, a single unit and seed a mean without an
interval, and zero variance the interval ``[v, v]`` (p = 1 if v = 0, else 0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
PRACTICAL_DIFFERENCE = 0.01  # IoU: a smaller mean difference is reported as "no difference", whatever its p


class Interval(NamedTuple):
    mean: float
    low: float
    high: float
    n: int  # values (per-image means, or episodes)
    groups: int  # seeds
    units: int  # distinct units (test images)
    df: float  # degrees of freedom of the t law
    p: float  # two-sided p-value of "the mean is 0"


def _as_values(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"intervals need finite values; got {np.count_nonzero(~np.isfinite(array))} NaN/inf")
    return array


def _labels(labels, size: int, name: str) -> np.ndarray:
    array = np.asarray(labels).ravel()
    if array.size != size:
        raise ValueError(f"mean_ci: {size} values but {array.size} {name}")
    return array


def _jackknife(sums: np.ndarray, weights: np.ndarray, axis: int) -> float:
    """Delete-one jackknife variance of sum(sums) / sum(weights), leaving out one level of ``axis`` at a time."""
    other = 1 - axis
    left_out = (sums.sum() - sums.sum(axis=other)) / (weights.sum() - weights.sum(axis=other))
    levels = left_out.size
    return float((levels - 1) / levels * np.sum((left_out - left_out.mean()) ** 2))


def mean_ci(values, seeds=None, units=None, weights=None, *, confidence: float = CONFIDENCE) -> Interval:
    """Weighted mean of ``values`` with a t-interval over its units and seeds (see the module doc).

    ``seeds`` and ``units`` label each value (default: one seed; every value its own unit); the same unit label
    under two seeds is the same test image. ``weights`` (default 1) are the crops behind each value.
    """
    x = _as_values(values)
    n = x.size
    seeds = np.zeros(n, int) if seeds is None else _labels(seeds, n, "seed labels")
    units = np.arange(n) if units is None else _labels(units, n, "unit labels")
    w = np.ones(n) if weights is None else _as_values(_labels(weights, n, "weights"))
    if np.any(w <= 0):
        raise ValueError("mean_ci: weights must be positive")
    if n == 0:
        return Interval(*(float("nan"),) * 3, 0, 0, 0, float("nan"), float("nan"))
    seed_levels, seed_index = np.unique(seeds, return_inverse=True)
    unit_levels, unit_index = np.unique(units, return_inverse=True)
    shape = (seed_levels.size, unit_levels.size)
    sums, totals = np.zeros(shape), np.zeros(shape)
    np.add.at(sums, (seed_index, unit_index), w * x)
    np.add.at(totals, (seed_index, unit_index), w)
    mean = float(sums.sum() / totals.sum())
    counts = (n, seed_levels.size, unit_levels.size)
    # (variance, levels) of the seeds' and the images' jackknife; a factor with one level contributes nothing
    seed_part, unit_part = ((_jackknife(sums, totals, axis) if levels > 1 else 0.0, levels) for axis, levels in enumerate(shape))
    parts = [part for part in (seed_part, unit_part) if part[1] > 1]
    if not parts:
        return Interval(mean, float("nan"), float("nan"), *counts, float("nan"), float("nan"))
    variance = sum(v for v, _ in parts)
    if variance <= 0 or np.ptp(x) == 0:
        return Interval(mean, mean, mean, *counts, float("inf"), 1.0 if mean == 0 else 0.0)
    df = variance**2 / sum(v**2 / (levels - 1) for v, levels in parts)
    # with several seeds, the t-interval over the seeds alone is a second candidate and the wider one is kept:
    # Satterthwaite's df errs high when the seed part, with its 2 df for 3 seeds, dominates
    candidates = [(variance, df)]
    if seed_part[1] > 1 and seed_part[0] > 0:
        candidates.append((seed_part[0], seed_part[1] - 1))
    quantile = 0.5 + confidence / 2
    half = max(float(stats.t.ppf(quantile, d) * np.sqrt(v)) for v, d in candidates)
    p = max(float(2 * stats.t.sf(abs(mean) / np.sqrt(v), d)) for v, d in candidates)
    return Interval(mean, mean - half, mean + half, *counts, float(df), p)


def verdict(mean: float, p_adjusted: float, threshold: float = PRACTICAL_DIFFERENCE, alpha: float = 1 - CONFIDENCE) -> str:
    """How the report states a paired difference: below the practical threshold it is "no difference", whatever
    its p; above it, "higher" or "lower" when the (multiplicity-adjusted) p is below ``alpha``, else "unclear"."""
    if np.isnan(mean):
        return "—"
    if abs(mean) < threshold:
        return "no difference"
    if p_adjusted < alpha:
        return "higher" if mean > 0 else "lower"
    return "unclear"


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
