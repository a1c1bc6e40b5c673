"""Group-bys over the per-image records: cell means with CIs, adaptation curves, paired differences.

Headline numbers use each run's final adaptation step; step 0 is the IoU before adaptation. A cell's mean is
over all its query crops; its interval and every paired test come from :func:`benchmark.stats.mean_ci` with
test images and seeds as the units (see docs/statistics.md), so 40 episodes that reuse a few dozen test
images count as what they are. Pairs are matched on (held-out line, k, seed, line, image): identical crops for
every algorithm, and, since episodes that differ only in k share their query crops, for both k too.
"""

from __future__ import annotations

import pandas as pd

from benchmark.report.records import BASELINE, IMAGE, REFERENCE_SUFFIX
from benchmark.stats import PRACTICAL_DIFFERENCE, holm, mean_ci, verdict
from tasks.catalogue import LINES

CELL_KEYS = ["algo", "k", "holdout", "line", "role"]
PAIR_KEYS = ["holdout", "k", "seed", "line", "unit"]
PREFERRED_ALGOS = ("maml", "fomaml", "reptile", BASELINE)
LINE_ORDER = [line.name for line in LINES]
COMPARISON_COLUMNS = ["pairs", "seeds", "images", "mean", "low", "high", "p", "p_holm", "verdict"]


def algo_order(algos) -> list[str]:
    """Known algorithms in a fixed order (the baseline last), then any others alphabetically, then the
    references (records.REFERENCE_SUFFIX)."""
    present = set(algos)
    references = sorted(a for a in present if a.endswith(REFERENCE_SUFFIX))
    others = sorted(present - set(PREFERRED_ALGOS) - set(references))
    return [a for a in PREFERRED_ALGOS if a in present] + others + references


def _images(units: pd.Series) -> int:
    """Distinct test images among the units (0 for records that only hold episodes)."""
    return int(units[units.str.startswith(IMAGE + " ")].nunique())


def _interval_columns(group: pd.DataFrame) -> pd.Series:
    ci = mean_ci(group["iou"].to_numpy(), group["seed"].to_numpy(), group["unit"].to_numpy(), group["weight"].to_numpy())
    episodes = group.drop_duplicates("run_id")["episodes"].sum()
    return pd.Series({"mean": ci.mean, "low": ci.low, "high": ci.high, "seeds": ci.groups,
                      "images": _images(group["unit"]), "episodes": episodes})


def _weighted_mean(group: pd.DataFrame) -> float:
    return float((group["iou"] * group["weight"]).sum() / group["weight"].sum())


def cell_summary(units: pd.DataFrame, keys: list[str] = CELL_KEYS) -> pd.DataFrame:
    """One row per algorithm x k x held-out line x evaluated line (and any other ``keys``): final-step mean IoU,
    95% CI, step-0 mean."""
    columns = [*keys, "mean", "low", "high", "seeds", "images", "episodes", "step0"]
    if units.empty:
        return pd.DataFrame(columns=columns)
    final = units[units["final"]]
    summary = final.groupby(keys).apply(_interval_columns, include_groups=False)
    step0 = units[units["step"] == 0].groupby(keys).apply(_weighted_mean, include_groups=False).rename("step0")
    summary = summary.join(step0).reset_index()
    return summary.astype({"seeds": int, "images": int, "episodes": int})[columns]


def adaptation_curves(units: pd.DataFrame) -> pd.DataFrame:
    """Held-out IoU against adaptation step: one row per algorithm x k x held-out line x step, with CI."""
    held_out = units[units["role"] == "held-out"]
    keys = ["algo", "k", "holdout", "step"]
    if held_out.empty:
        return pd.DataFrame(columns=[*keys, "mean", "low", "high", "seeds", "images", "episodes"])
    curves = held_out.groupby(keys).apply(_interval_columns, include_groups=False)
    return curves.reset_index().astype({"seeds": int, "images": int, "episodes": int})


def compare_pairs(pairs: pd.DataFrame, keys: list[str], family: list[str], threshold: float) -> pd.DataFrame:
    """Mean paired difference per ``keys`` with CI and t-test over images and seeds, Holm across ``family``."""
    def one(group: pd.DataFrame) -> pd.Series:
        ci = mean_ci(group["diff"].to_numpy(), group["seed"].to_numpy(), group["unit"].to_numpy(), group["weight"].to_numpy())
        return pd.Series({"pairs": ci.n, "seeds": ci.groups, "images": _images(group["unit"]),
                          "mean": ci.mean, "low": ci.low, "high": ci.high, "p": ci.p})

    table = pairs.groupby(keys).apply(one, include_groups=False).reset_index()
    table["p_holm"] = table.groupby(family)["p"].transform(lambda p: holm(p.to_numpy()))
    table["verdict"] = [verdict(m, p, threshold) for m, p in zip(table["mean"], table["p_holm"])]
    return table.astype({"pairs": int, "seeds": int, "images": int})[[*keys, *COMPARISON_COLUMNS]]


def paired_differences(units: pd.DataFrame, threshold: float = PRACTICAL_DIFFERENCE) -> pd.DataFrame:
    """Each algorithm minus the fine-tuning baseline on identical held-out crops, per line and k.

    Matched per (held-out line, k, seed, line, image); Holm-corrected across the lines of each (algorithm, k);
    a mean difference below ``threshold`` is "no difference", whatever its p.
    """
    final = units[units["final"] & (units["role"] == "held-out")]
    base = final[final["algo"] == BASELINE][[*PAIR_KEYS, "iou"]]
    others = final[final["algo"] != BASELINE][["algo", *PAIR_KEYS, "iou", "weight"]]
    pairs = others.merge(base, on=PAIR_KEYS, suffixes=("", "_base"))
    if pairs.empty:
        return pd.DataFrame(columns=["algo", "k", "line", *COMPARISON_COLUMNS])
    pairs["diff"] = pairs["iou"] - pairs["iou_base"]
    return compare_pairs(pairs, ["algo", "k", "line"], ["algo", "k"], threshold)


def is_reference(algos: pd.Series) -> pd.Series:
    return algos.str.endswith(REFERENCE_SUFFIX)


def best_references(cells: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    """Per ``where``, the reference with the highest mean IoU in ``cells``: chosen on the very episodes it is
    compared on, so it is a floor to clear, not a method one could have picked in advance."""
    references = cells[is_reference(cells["algo"])]
    if references.empty:
        return pd.DataFrame(columns=[*where, "reference", "reference_mean"])
    best = references.loc[references.groupby(where)["mean"].idxmax(), [*where, "algo", "mean"]]
    return best.rename(columns={"algo": "reference", "mean": "reference_mean"}).reset_index(drop=True)


def best_reference_differences(
    units: pd.DataFrame, cells: pd.DataFrame, where: list[str], family: list[str], threshold: float = PRACTICAL_DIFFERENCE,
) -> pd.DataFrame:
    """Each algorithm minus the best reference of its cell (:func:`best_references` per ``where``), paired per
    (seed, test image) on identical crops, with the mean IoU of both beside the difference; Holm across the
    cells of each ``family``; below ``threshold``, "no difference"."""
    columns = ["algo", *where, "reference", "reference_mean", "algo_mean", *COMPARISON_COLUMNS]
    best = best_references(cells, where)
    final = units[units["final"]]
    own = final[~is_reference(final["algo"])].merge(best[[*where, "reference"]], on=where)
    reference = final.rename(columns={"algo": "reference", "iou": "iou_reference"})[[*where, "reference", "seed", "unit", "iou_reference"]]
    pairs = own.merge(reference, on=[*where, "reference", "seed", "unit"])
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    pairs["diff"] = pairs["iou"] - pairs["iou_reference"]
    table = compare_pairs(pairs, ["algo", *where, "reference"], family, threshold).merge(best, on=[*where, "reference"])
    means = cells[["algo", *where, "mean"]].rename(columns={"mean": "algo_mean"})
    return table.merge(means, on=["algo", *where])[columns]


def held_out_against_best_reference(units: pd.DataFrame, cells: pd.DataFrame, threshold: float = PRACTICAL_DIFFERENCE) -> pd.DataFrame:
    """:func:`best_reference_differences` on the held-out line, per (k, held-out line), Holm across the lines of
    each algorithm and k, as the paired table against the baseline."""
    held = units[units["role"] == "held-out"]
    return best_reference_differences(held, cells[cells["role"] == "held-out"], ["k", "line"], ["algo", "k"], threshold)


def leader_differences(units: pd.DataFrame, cells: pd.DataFrame, where: list[str], threshold: float = PRACTICAL_DIFFERENCE) -> pd.DataFrame:
    """Per ``where``, the method with the highest mean IoU in ``cells`` (references included) minus the runner-up,
    paired per (seed, test image) on identical crops: what a "best" mark has to rest on, beyond the ranking of
    two means. Each block is its own family (no Holm); cells with one method have no row."""
    columns = [*where, "algo", "runner_up", *COMPARISON_COLUMNS]
    ranked = cells.sort_values("mean", ascending=False, kind="stable")
    rank = ranked.groupby(where).cumcount()
    top = ranked[rank == 0][[*where, "algo"]].merge(
        ranked[rank == 1][[*where, "algo"]].rename(columns={"algo": "runner_up"}), on=where)
    final = units[units["final"]]
    runner_up = final.rename(columns={"algo": "runner_up", "iou": "iou_runner_up"})[[*where, "runner_up", "seed", "unit", "iou_runner_up"]]
    pairs = final.merge(top, on=[*where, "algo"]).merge(runner_up, on=[*where, "runner_up", "seed", "unit"])
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    pairs["diff"] = pairs["iou"] - pairs["iou_runner_up"]
    return compare_pairs(pairs, [*where, "algo", "runner_up"], where, threshold)[columns]


def k_differences(units: pd.DataFrame, threshold: float = PRACTICAL_DIFFERENCE) -> pd.DataFrame:
    """The effect of k: each algorithm's held-out IoU at its largest k minus its smallest, per held-out line.

    Paired per (algorithm, held-out line, seed, image): the two k share their query crops. Only per-image
    records qualify (episodes of older records drew different images for each k). Holm across the lines of
    each algorithm; below ``threshold``, "no difference".
    """
    final = units[units["final"] & (units["role"] == "held-out") & units["unit"].str.startswith(IMAGE + " ")]
    keys = ["algo", "holdout", "seed", "line", "unit"]
    ks = final.groupby("algo")["k"].agg(["min", "max"])
    ks = ks[ks["min"] < ks["max"]]
    low = final.merge(ks, left_on=["algo", "k"], right_on=["algo", "min"])[[*keys, "k", "iou", "weight"]]
    high = final.merge(ks, left_on=["algo", "k"], right_on=["algo", "max"])[[*keys, "k", "iou"]]
    pairs = high.merge(low, on=keys, suffixes=("", "_low"))
    if pairs.empty:
        return pd.DataFrame(columns=["algo", "k", "k_low", "line", *COMPARISON_COLUMNS])
    pairs["diff"] = pairs["iou"] - pairs["iou_low"]
    return compare_pairs(pairs, ["algo", "k", "k_low", "line"], ["algo"], threshold)


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the report's order: algorithm (fixed), k, then cell lines in catalogue order."""
    keys = {"algo": algo_order(frame["algo"].unique())} if "algo" in frame else {}
    for column in ("holdout", "line"):
        if column in frame:
            keys[column] = LINE_ORDER
    sort = frame.copy()
    for column, order in keys.items():
        sort[column] = pd.Categorical(sort[column], categories=order, ordered=True)
    by = [c for c in ("algo", "k", "holdout", "line", "step") if c in sort]
    result = sort.sort_values(by, kind="stable")
    for column in keys:
        result[column] = result[column].astype(str)
    return result.reset_index(drop=True)
