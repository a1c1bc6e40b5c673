"""The report's statistics against scipy, closed forms, hand examples and simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark import coverage
from benchmark.report.summaries import paired_differences
from benchmark.stats import PRACTICAL_DIFFERENCE, holm, mean_ci, verdict

# IoU-like known data: skewed and bounded.
KNOWN = np.array([0.91, 0.42, 0.77, 0.65, 0.88, 0.12, 0.59, 0.73, 0.81, 0.36, 0.95, 0.68, 0.54, 0.79, 0.84])


def test_one_seed_independent_values_is_scipys_one_sample_t():
    ci = mean_ci(KNOWN)
    ref = stats.ttest_1samp(KNOWN, 0.0)
    assert ci.mean == pytest.approx(KNOWN.mean())
    assert (ci.low, ci.high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert ci.p == pytest.approx(ref.pvalue) and ci.df == KNOWN.size - 1
    assert (ci.n, ci.groups, ci.units) == (KNOWN.size, 1, KNOWN.size)
    assert mean_ci(KNOWN, confidence=0.9).high == pytest.approx(ref.confidence_interval(0.9).high)


def test_crops_of_one_image_count_once_as_a_t_over_image_means():
    """Several crops per image (unequal counts): the t-interval over images, and the same from per-image rows."""
    rng = np.random.default_rng(1)
    crops = rng.integers(1, 7, 12)
    units = np.repeat(np.arange(12), crops)
    x = rng.uniform(0.2, 0.9, units.size)
    per_crop = mean_ci(x, units=units)
    sums, counts = np.bincount(units, weights=x), np.bincount(units)
    per_image = mean_ci(sums / counts, units=np.arange(12), weights=counts)
    assert per_crop._replace(n=12) == per_image and per_crop.n == units.size
    assert per_crop.mean == pytest.approx(x.mean()) and per_crop.units == 12 and per_crop.df == pytest.approx(11)
    # the jackknife of a ratio of sums, written out
    left_out = (x.sum() - sums) / (x.size - counts)
    se = np.sqrt(11 / 12 * np.sum((left_out - left_out.mean()) ** 2))
    assert per_crop.high - per_crop.mean == pytest.approx(stats.t.ppf(0.975, 11) * se)
    # equal crops per image: exactly scipy's t over the image means
    equal = mean_ci(x[:12].repeat(3) + np.tile([0, 0.01, -0.01], 12), units=np.arange(12).repeat(3))
    assert (equal.low, equal.high) == pytest.approx(tuple(stats.ttest_1samp(x[:12], 0).confidence_interval()))


def test_seeds_and_images_crossed_balanced_closed_form():
    """Balanced S x I table: V = var(seed means) / S + var(image means) / I (the delete-one jackknifes of a
    mean), df by Welch-Satterthwaite."""
    rng = np.random.default_rng(2)
    table = 0.6 + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.1, (1, 20)) + rng.normal(0, 0.05, (3, 20))
    seeds, units = np.indices(table.shape)
    ci = mean_ci(table.ravel(), seeds.ravel(), units.ravel())
    v_seeds = table.mean(axis=1).var(ddof=1) / 3
    v_images = table.mean(axis=0).var(ddof=1) / 20
    df = (v_seeds + v_images) ** 2 / (v_seeds**2 / 2 + v_images**2 / 19)
    assert ci.df == pytest.approx(df)
    crossed, seeds_alone = stats.t.ppf(0.975, df) * np.sqrt(v_seeds + v_images), stats.t.ppf(0.975, 2) * np.sqrt(v_seeds)
    assert ci.high - ci.mean == pytest.approx(max(crossed, seeds_alone))
    p_crossed = 2 * stats.t.sf(table.mean() / np.sqrt(v_seeds + v_images), df)
    assert ci.p == pytest.approx(max(p_crossed, 2 * stats.t.sf(table.mean() / np.sqrt(v_seeds), 2)))
    assert (ci.groups, ci.units) == (3, 20)


def test_a_dominant_seed_effect_gets_the_seeds_own_t_interval():
    """Three seeds far apart: never narrower than scipy's t-interval over the seed means."""
    rng = np.random.default_rng(4)
    table = 0.6 + np.array([[-0.1], [0.0], [0.12]]) + rng.normal(0, 0.05, (3, 20))
    seeds, units = np.indices(table.shape)
    ci = mean_ci(table.ravel(), seeds.ravel(), units.ravel())
    ref = stats.ttest_1samp(table.mean(axis=1), 0.0)
    assert (ci.low, ci.high) == pytest.approx(tuple(ref.confidence_interval()))
    assert ci.p == pytest.approx(ref.pvalue)


def test_images_shared_by_seeds_are_one_unit():
    """The same image under three seeds is left out under all three: a shared image effect widens the interval
    that a nested (image within seed) reading would not see."""
    rng = np.random.default_rng(3)
    image_effect = rng.normal(0, 0.15, (1, 15))
    table = 0.5 + image_effect + rng.normal(0, 0.02, (3, 15))
    seeds, units = np.indices(table.shape)
    crossed = mean_ci(table.ravel(), seeds.ravel(), units.ravel())
    nested = mean_ci(table.ravel(), seeds.ravel(), (seeds * 100 + units).ravel())
    assert crossed.units == 15 and nested.units == 45
    assert crossed.high - crossed.low > 1.5 * (nested.high - nested.low)


def test_degenerate_samples():
    constant = mean_ci(np.full(6, 0.25), units=np.arange(6) % 3)
    assert (constant.mean, constant.low, constant.high, constant.p) == (0.25, 0.25, 0.25, 0.0)
    assert mean_ci(np.zeros(5)).p == 1.0
    single = mean_ci(np.array([0.4, 0.5]), units=[7, 7])
    assert single.mean == pytest.approx(0.45) and np.isnan(single.low) and np.isnan(single.p) and single.units == 1
    empty = mean_ci(np.array([]))
    assert empty.n == 0 and np.isnan(empty.mean) and np.isnan(empty.low)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"values": [0.1, np.nan, 0.3]}, "NaN"),
        ({"values": KNOWN, "seeds": [0, 1]}, "seed labels"),
        ({"values": KNOWN, "units": [0, 1]}, "unit labels"),
        ({"values": [0.1, 0.2], "weights": [1, 0]}, "positive"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mean_ci(**kwargs)


def test_verdict_applies_the_practical_threshold_before_p():
    assert verdict(0.004, 1e-9) == "no difference"
    assert verdict(-0.009, 0.0) == "no difference"
    assert verdict(0.02, 0.01) == "higher" and verdict(-0.02, 0.01) == "lower"
    assert verdict(0.02, 0.2) == "unclear"
    assert verdict(0.004, 0.01, threshold=0.001) == "higher"
    assert verdict(float("nan"), float("nan")) == "—"
    assert PRACTICAL_DIFFERENCE == 0.01


# BT-474 held out, k = 1, the committed sweep before per-image records (issue 12): maml - finetune on 40
# episodes, 29 exactly 0 and the rest below 0.003; the old paired table called it significant (p = 0.003).
BT474_K1_MAML_MINUS_FINETUNE = [
    0.00018310546875, 0, 0, 0, 0, 0, 0.0008544921875, 0, 0.00115966796875, 0, 0, 0.00054931640625, 0,
    6.103515625e-05, 0, 6.103515625e-05, 0.0001220703125, 0.00042724609375, 0, 0, 0, 0, 0, 0, 0.0010986328125,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0.00115966796875, 0, 0, 0.0028076171875, 0, 0,
]


def test_a_zero_effect_is_never_significant_bt474_regression():
    diff = np.array(BT474_K1_MAML_MINUS_FINETUNE)
    finetune = np.linspace(0.2, 0.5, diff.size)
    rows = []
    for algo, iou in (("maml", finetune + diff), ("finetune", finetune)):
        for episode, value in enumerate(iou):
            rows.append({"algo": algo, "holdout": "BT-474", "k": 1, "seed": 0, "line": "BT-474", "role": "held-out",
                         "unit": f"episode {episode}", "step": 10, "iou": value, "weight": 1.0, "final": True})
    table = paired_differences(pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["pairs"] == 40 and row["mean"] == pytest.approx(diff.mean())
    assert row["p"] < 0.05  # a tiny, consistent difference has a small p...
    assert row["verdict"] == "no difference"  # ...and is still no difference


def test_coverage_fast():
    """A small replicate count: the report's interval near nominal where the previous report's was far off."""
    report = {"report": coverage.image_t}
    assert 0.88 <= coverage.coverage(coverage.SCENARIOS[0], reps=100, seed=1, methods=report)["report"][0] <= 1.0
    old_default = coverage.coverage(coverage.Scenario("3 seeds, 11 images", seeds=3, images=11, episodes=20), reps=60, seed=2)
    assert old_default["episodes (previous report)"][0] < 0.8
    assert old_default["images x seeds, jackknife t (report)"][0] >= 0.85


@pytest.mark.slow
def test_coverage_at_the_sweeps_counts():
    """1000 replicates: within 0.93-0.97 for 1 and 3 seeds at the default's 40 test images, with effects as
    measured on a default run (the stress rows, where support images matter more, are in docs/statistics.md)."""
    for scenario in coverage.SCENARIOS:
        if scenario.images == 40 and not scenario.name.startswith("stress"):
            rate = coverage.coverage(scenario, reps=1000, methods={"report": coverage.image_t})["report"][0]
            assert 0.93 <= rate <= 0.97, (scenario.name, rate)


def test_truth_is_the_integral_it_claims():
    s = coverage.Scenario("check", seeds=3)
    rng = np.random.default_rng(0)
    sd = np.sqrt(s.image_sd**2 + s.seed_image_sd**2 + s.support_sd**2 / s.k + s.episode_sd**2 + s.crop_sd**2 + s.seed_sd**2)
    draws = 1 / (1 + np.exp(-(s.mu + rng.normal(0, sd, 2_000_000))))
    assert coverage.truth(s, None) == pytest.approx(draws.mean(), abs=1e-3)


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
