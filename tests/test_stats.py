"""The report's statistics against scipy, normal theory, exact enumeration and hand examples."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from benchmark.stats import flat_ci, hierarchical_ci, holm, mean_ci, wilcoxon_p

# IoU-like known data: skewed and bounded.
KNOWN = np.array([0.91, 0.42, 0.77, 0.65, 0.88, 0.12, 0.59, 0.73, 0.81, 0.36, 0.95, 0.68, 0.54, 0.79, 0.84])


def test_flat_ci_is_scipy_bca_on_known_data():
    ours = flat_ci(KNOWN, n_resamples=4999, seed=3)
    ref = stats.bootstrap((KNOWN,), np.mean, method="BCa", n_resamples=4999, rng=np.random.default_rng(3))
    assert ours.mean == pytest.approx(KNOWN.mean())
    assert (ours.low, ours.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert ours.n == KNOWN.size and ours.groups == 1


def test_flat_ci_matches_normal_theory_on_large_symmetric_sample():
    x = np.random.default_rng(0).normal(0.6, 0.1, 2000)
    ci = flat_ci(x, n_resamples=2999)
    half = stats.norm.ppf(0.975) * x.std(ddof=1) / np.sqrt(x.size)
    assert ci.low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_flat_ci_is_reproducible_and_seed_dependent():
    assert flat_ci(KNOWN, seed=1) == flat_ci(KNOWN, seed=1)
    assert flat_ci(KNOWN, seed=1).low != flat_ci(KNOWN, seed=2).low


@pytest.mark.parametrize("ci", [flat_ci, lambda x: hierarchical_ci(x, np.arange(len(x)) % 2)])
def test_degenerate_samples(ci):
    constant = ci(np.full(6, 0.25))
    assert (constant.mean, constant.low, constant.high) == (0.25, 0.25, 0.25)
    single = ci(np.array([0.4]))
    assert single.mean == 0.4 and np.isnan(single.low) and np.isnan(single.high) and single.n == 1
    empty = ci(np.array([]))
    assert empty.n == 0 and np.isnan(empty.mean)


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        flat_ci([0.1, np.nan, 0.3])


def test_hierarchical_with_one_seed_is_the_percentile_bootstrap():
    ours = hierarchical_ci(KNOWN, np.zeros(KNOWN.size), n_resamples=20000, seed=0)
    ref = stats.bootstrap((KNOWN,), np.mean, method="percentile", n_resamples=20000, rng=np.random.default_rng(9))
    # different random streams: agree to Monte-Carlo error (a few thousandths here)
    assert (ours.low, ours.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=0.006)
    assert ours.groups == 1


def test_mean_ci_uses_flat_bca_for_one_seed_and_hierarchical_for_several():
    assert mean_ci(KNOWN, np.zeros(KNOWN.size)) == flat_ci(KNOWN)
    assert mean_ci(KNOWN) == flat_ci(KNOWN)
    seeds = np.arange(KNOWN.size) % 3
    assert mean_ci(KNOWN, seeds) == hierarchical_ci(KNOWN, seeds)


def _width(ci) -> float:
    return ci.high - ci.low


def test_hierarchical_is_wider_with_between_seed_variance():
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 0.05, (4, 30))
    same = (0.6 + noise).ravel()
    shifted = (0.6 + np.array([[-0.1], [0.0], [0.05], [0.12]]) + noise).ravel()
    seeds = np.repeat(np.arange(4), 30)
    assert _width(hierarchical_ci(shifted, seeds)) > 3 * _width(flat_ci(shifted))
    # without between-seed variance the two agree, up to the two-stage bootstrap's extra width
    assert _width(hierarchical_ci(same, seeds)) == pytest.approx(_width(flat_ci(same)), rel=0.6)


def test_hierarchical_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="group labels"):
        hierarchical_ci(KNOWN, [0, 1])


def _coverage(between_sd: float, reps: int = 150) -> tuple[float, float]:
    rng = np.random.default_rng(11)
    hits = np.zeros(2)
    seeds = np.repeat(np.arange(5), 20)
    for rep in range(reps):
        x = (0.5 + rng.normal(0, between_sd, (5, 1)) + rng.normal(0, 0.1, (5, 20))).ravel()
        for i, ci in enumerate((hierarchical_ci(x, seeds, n_resamples=999, seed=rep), flat_ci(x, n_resamples=999))):
            hits[i] += ci.low <= 0.5 <= ci.high
    return tuple(hits / reps)


def test_hierarchical_coverage_with_seed_effects():
    hierarchical, flat = _coverage(between_sd=0.1)
    # 5 seeds: the seed-level percentile bootstrap under-covers a little; episode-only intervals badly
    assert hierarchical >= 0.75
    assert flat <= 0.55


def test_coverage_without_seed_effects_is_nominal():
    hierarchical, flat = _coverage(between_sd=0.0)
    assert 0.9 <= flat <= 0.99
    assert 0.9 <= hierarchical <= 1.0


# Darwin's Zea mays differences (cross- minus self-fertilised height), the scipy.stats.wilcoxon example.
DARWIN = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75], dtype=float)


def test_wilcoxon_against_exact_enumeration():
    ranks = stats.rankdata(np.abs(DARWIN))
    w_plus = ranks[DARWIN > 0].sum()
    w_all = np.array([sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=15)])
    observed = min(w_plus, ranks.sum() - w_plus)
    exact = 2 * np.mean(w_all <= observed)
    assert wilcoxon_p(DARWIN) == pytest.approx(exact)
    assert wilcoxon_p(DARWIN) == pytest.approx(0.041259765625)


def test_wilcoxon_degenerate_differences():
    assert wilcoxon_p(np.zeros(8)) == 1.0
    assert np.isnan(wilcoxon_p([]))
    # zeros are dropped and the rest tested (scipy then uses the normal approximation, not the exact law)
    with_zeros = np.r_[0.0, 0.0, DARWIN]
    assert wilcoxon_p(with_zeros) == pytest.approx(stats.wilcoxon(with_zeros).pvalue)
    assert wilcoxon_p(with_zeros) == pytest.approx(wilcoxon_p(DARWIN), abs=1e-3)


def test_holm_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # 0.02*3, max(0.3*2, ...), max(0.5*1, 0.6); and capped at 1
    assert holm([0.02, 0.5, 0.3]) == pytest.approx([0.06, 0.6, 0.6])
    assert holm([0.4, 0.7]) == pytest.approx([0.8, 0.8])
    assert holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])


def test_holm_leaves_nan_out_of_the_family():
    adjusted = holm([0.01, np.nan, 0.04])
    assert adjusted[[0, 2]] == pytest.approx([0.02, 0.04])
    assert np.isnan(adjusted[1])
    assert np.isnan(holm([np.nan])).all()
    with pytest.raises(ValueError, match="0, 1"):
        holm([0.2, 1.5])


def _step_down_rejections(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's procedure as first stated: reject sorted hypotheses while p_(i) <= alpha / (m - i)."""
    rejected = np.zeros(p.size, bool)
    for i, idx in enumerate(np.argsort(p)):
        if p[idx] > alpha / (p.size - i):
            break
        rejected[idx] = True
    return rejected


def test_holm_adjusted_p_values_reproduce_the_step_down_procedure():
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.uniform(0, 0.1, rng.integers(1, 9)) ** rng.uniform(0.5, 2)
        for alpha in (0.01, 0.05, 0.1):
            assert np.array_equal(holm(p) <= alpha, _step_down_rejections(p, alpha))
