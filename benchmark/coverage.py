"""Coverage of the report's 95% intervals, measured by simulation against a known truth.

``python -m benchmark.coverage [--reps N]`` prints the table in docs/statistics.md.

The simulated evaluation mimics the real one: a line's test split is a random draw of ``images`` images from
a population; each seed is a meta-trained model with its own effect; each of the seed's ``episodes`` episodes
draws ``queries`` query images and ``k`` support images from the split without replacement (images shared
across episodes and seeds, as in the benchmark); a query crop's IoU is the logistic of

    mu + seed + image + seed x image + support quality of the episode's support images + episode + crop

(independent normal effects on the logit scale; the support term is the mean over its support images of an
image-level quality, so images also enter through the support set). Every effect is random, so the truth
has a closed form up to one Gaussian integral (Gauss-Hermite): with several seeds, the mean IoU over new
seeds, images and crops; with one seed, the mean for that seed's model (its seed effect fixed), which is all
one seed can speak to. Intervals compared: this module's candidates and :func:`benchmark.stats.mean_ci`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from benchmark.stats import mean_ci


@dataclass(frozen=True)
class Scenario:
    """Counts and effect sizes (standard deviations on the logit scale). The defaults are estimated from a
    default-preset run (Reptile, MCF7 held out, k = 3, synthetic generator 7: held-out IoU 0.73; per-image mean
    logits spread 0.24 with 0.35 within an image, so about 0.16 between images; support images' episode effects
    about 0.05; no episode effect beyond them); the seed effect is a guess from the issue's reruns (0.014 IoU
    from the thread count alone, about 0.07 on the logit scale), taken larger."""

    name: str
    seeds: int
    images: int = 40
    episodes: int = 40
    queries: int = 4
    k: int = 3
    mu: float = 1.0
    seed_sd: float = 0.1
    image_sd: float = 0.16
    seed_image_sd: float = 0.05
    support_sd: float = 0.05
    episode_sd: float = 0.02
    crop_sd: float = 0.35


STRESS = {"image_sd": 0.6, "support_sd": 0.3, "episode_sd": 0.2, "crop_sd": 0.8, "mu": 0.4}  # support matters more
SCENARIOS = (
    Scenario("1 seed, 40 images", seeds=1),
    Scenario("3 seeds, 40 images", seeds=3),
    Scenario("3 seeds, 40 images, seed effect x3", seeds=3, seed_sd=0.3),
    Scenario("stress: 1 seed, 40 images, strong support effect", seeds=1, **STRESS),
    Scenario("stress: the same at k = 1", seeds=1, k=1, **STRESS),
    Scenario("1 seed, 11 images (old default)", seeds=1, images=11),
    Scenario("3 seeds, 11 images (old default)", seeds=3, images=11),
)
HERMITE = np.polynomial.hermite.hermgauss(80)


def _expected_iou(mean: float, sd: float) -> float:
    """E[logistic(mean + sd Z)], Z standard normal."""
    x, w = HERMITE
    return float(np.sum(w * special.expit(mean + np.sqrt(2) * sd * x)) / np.sqrt(np.pi))


def truth(s: Scenario, seed_effect: float | None) -> float:
    """The estimand: over new seeds (``seed_effect`` None), or for one model (its seed effect given)."""
    crop_var = s.image_sd**2 + s.seed_image_sd**2 + s.support_sd**2 / s.k + s.episode_sd**2 + s.crop_sd**2
    if seed_effect is None:
        return _expected_iou(s.mu, np.sqrt(crop_var + s.seed_sd**2))
    return _expected_iou(s.mu + seed_effect, np.sqrt(crop_var))


def simulate(s: Scenario, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], float]:
    """One evaluation: per-crop rows (seed, episode, image, iou) and the truth its interval should cover."""
    image = rng.normal(0, s.image_sd, s.images)
    support = rng.normal(0, s.support_sd, s.images)
    seed_effects = rng.normal(0, s.seed_sd, s.seeds)
    rows = {"seed": [], "episode": [], "image": [], "iou": []}
    for seed in range(s.seeds):
        seed_image = rng.normal(0, s.seed_image_sd, s.images)
        for episode in range(s.episodes):
            order = rng.permutation(s.images)
            queries, supports = order[: s.queries], order[s.queries : s.queries + s.k]
            logit = (
                s.mu + seed_effects[seed] + image[queries] + seed_image[queries] + support[supports].mean()
                + rng.normal(0, s.episode_sd) + rng.normal(0, s.crop_sd, s.queries)
            )
            rows["seed"] += [seed] * s.queries
            rows["episode"] += [seed * s.episodes + episode] * s.queries
            rows["image"] += queries.tolist()
            rows["iou"] += special.expit(logit).tolist()
    target = truth(s, seed_effects[0] if s.seeds == 1 else None)
    return {name: np.asarray(v) for name, v in rows.items()}, target


def _image_cells(rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sums and crop counts per (seed, image)."""
    shape = (rows["seed"].max() + 1, rows["image"].max() + 1)
    sums, counts = np.zeros(shape), np.zeros(shape)
    np.add.at(sums, (rows["seed"], rows["image"]), rows["iou"])
    np.add.at(counts, (rows["seed"], rows["image"]), 1)
    return sums, counts


def episode_bootstrap(rows, rng, resamples=999) -> tuple[float, float]:
    """The report before per-image records: BCa over episode means (one seed), or the two-level percentile
    bootstrap, seeds then episodes within a seed (several)."""
    episodes = np.unique(rows["episode"])
    means = np.array([rows["iou"][rows["episode"] == e].mean() for e in episodes])
    seeds = np.array([rows["seed"][rows["episode"] == e][0] for e in episodes])
    if np.unique(seeds).size == 1:
        ci = stats.bootstrap((means,), np.mean, method="BCa", n_resamples=resamples, rng=rng).confidence_interval
        return ci.low, ci.high
    groups = [means[seeds == g] for g in np.unique(seeds)]
    drawn = rng.integers(0, len(groups), (resamples, len(groups)))
    stat = np.array([np.mean([groups[g][rng.integers(0, groups[g].size, groups[g].size)].mean() for g in row]) for row in drawn])
    return tuple(np.quantile(stat, [0.025, 0.975]))


def nested_image_bootstrap(rows, rng, resamples=999) -> tuple[float, float]:
    """Percentile cluster bootstrap: seeds with replacement, then test images with replacement within each
    drawn seed; the statistic is the crop-weighted mean."""
    sums, counts = _image_cells(rows)
    present = [np.flatnonzero(counts[s]) for s in range(sums.shape[0])]
    seeds = rng.integers(0, sums.shape[0], (resamples, sums.shape[0])) if sums.shape[0] > 1 else np.zeros((resamples, 1), int)
    total, weight = np.zeros(resamples), np.zeros(resamples)
    for slot in range(seeds.shape[1]):
        for s in range(sums.shape[0]):
            chosen = seeds[:, slot] == s
            picks = present[s][rng.integers(0, present[s].size, (int(chosen.sum()), present[s].size))]
            total[chosen] += sums[s, picks].sum(axis=1)
            weight[chosen] += counts[s, picks].sum(axis=1)
    return tuple(np.quantile(total / weight, [0.025, 0.975]))


def seed_t(rows, rng=None) -> tuple[float, float]:
    """t-interval over seed means (several seeds only): ignores the image variance the seeds share."""
    means = np.array([rows["iou"][rows["seed"] == s].mean() for s in np.unique(rows["seed"])])
    if means.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, means.size - 1) * means.std(ddof=1) / np.sqrt(means.size)
    return means.mean() - half, means.mean() + half


def image_t(rows, rng=None) -> tuple[float, float]:
    """The report's interval: :func:`benchmark.stats.mean_ci` over (query) images and seeds."""
    ci = mean_ci(rows["iou"], rows["seed"], rows["image"])
    return ci.low, ci.high


METHODS = {
    "episodes (previous report)": episode_bootstrap,
    "images nested in seeds, percentile": nested_image_bootstrap,
    "t over seed means": seed_t,
    "images x seeds, jackknife t (report)": image_t,
}


def coverage(s: Scenario, reps: int, seed: int = 0, methods: dict | None = None) -> dict[str, tuple[float, float]]:
    """Per method (default: all of :data:`METHODS`): (fraction of replicates whose interval covers the truth,
    mean interval width)."""
    methods = METHODS if methods is None else methods
    rng = np.random.default_rng(seed)
    hits = {name: [] for name in methods}
    widths = {name: [] for name in methods}
    for _ in range(reps):
        rows, target = simulate(s, rng)
        for name, method in methods.items():
            low, high = method(rows, rng)
            if np.isnan(low):
                continue
            hits[name].append(low <= target <= high)
            widths[name].append(high - low)
    return {name: (float(np.mean(hits[name])), float(np.mean(widths[name]))) for name in methods if hits[name]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.coverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1000, help="simulated evaluations per scenario (default 1000)")
    args = parser.parse_args(argv)
    names = list(METHODS)
    print(f"Coverage of nominal 95% intervals ({args.reps} simulated evaluations per row; mean width in brackets)\n")
    print("| scenario | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for s in SCENARIOS:
        result = coverage(s, args.reps)
        cells = [f"{result[n][0]:.3f} [{result[n][1]:.3f}]" if n in result else "—" for n in names]
        print(f"| {s.name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
