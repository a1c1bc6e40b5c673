"""Group-bys over the per-episode records: cell means with CIs, adaptation curves, paired differences.

Headline numbers use each run's final adaptation step; step 0 is the IoU before adaptation. Every
interval comes from :func:`benchmark.stats.mean_ci` with the episodes' seeds as groups (flat BCa for
one seed, hierarchical for several) and a fixed RNG seed, so a report is reproducible.
"""

from __future__ import annotations

import pandas as pd

from benchmark.report.records import BASELINE
from benchmark.stats import N_RESAMPLES, holm, mean_ci, wilcoxon_p
from tasks.catalogue import LINES

CELL_KEYS = ["algo", "k", "holdout", "line", "role"]
PAIR_KEYS = ["holdout", "k", "seed", "line", "episode"]
PREFERRED_ALGOS = ("maml", "fomaml", "reptile", BASELINE)
LINE_ORDER = [line.name for line in LINES]


def algo_order(algos) -> list[str]:
    """Known algorithms in a fixed order (the baseline last), then any others alphabetically."""
    present = set(algos)
    return [a for a in PREFERRED_ALGOS if a in present] + sorted(present - set(PREFERRED_ALGOS))


def _interval_columns(group: pd.DataFrame, value: str, n_resamples: int) -> pd.Series:
    ci = mean_ci(group[value].to_numpy(), group["seed"].to_numpy(), n_resamples=n_resamples)
    return pd.Series({"mean": ci.mean, "low": ci.low, "high": ci.high, "seeds": ci.groups, "episodes": ci.n})


def cell_summary(records: pd.DataFrame, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """One row per algorithm x k x held-out line x evaluated line: final-step mean IoU, 95% CI, step-0 mean."""
    columns = [*CELL_KEYS, "mean", "low", "high", "seeds", "episodes", "step0"]
    if records.empty:
        return pd.DataFrame(columns=columns)
    final = records[records["final"]]
    summary = final.groupby(CELL_KEYS).apply(_interval_columns, "iou", n_resamples, include_groups=False)
    step0 = records[records["step"] == 0].groupby(CELL_KEYS)["iou"].mean().rename("step0")
    summary = summary.join(step0).reset_index()
    return summary.astype({"seeds": int, "episodes": int})[columns]


def adaptation_curves(records: pd.DataFrame, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Held-out IoU against adaptation step: one row per algorithm x k x held-out line x step, with CI."""
    held_out = records[records["role"] == "held-out"]
    keys = ["algo", "k", "holdout", "step"]
    if held_out.empty:
        return pd.DataFrame(columns=[*keys, "mean", "low", "high", "seeds", "episodes"])
    curves = held_out.groupby(keys).apply(_interval_columns, "iou", n_resamples, include_groups=False)
    return curves.reset_index().astype({"seeds": int, "episodes": int})


def paired_differences(records: pd.DataFrame, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Each algorithm minus the fine-tuning baseline on identical held-out episodes, per line and k.

    Episodes are matched on (held-out line, k, seed, line, episode); the mean difference gets a CI
    over the matched pairs, the Wilcoxon signed-rank test a p-value, Holm-corrected across the lines
    of each (algorithm, k).
    """
    columns = ["algo", "k", "line", "pairs", "seeds", "mean", "low", "high", "p", "p_holm"]
    final = records[records["final"] & (records["role"] == "held-out")]
    base = final[final["algo"] == BASELINE][[*PAIR_KEYS, "iou"]]
    others = final[final["algo"] != BASELINE][["algo", *PAIR_KEYS, "iou"]]
    pairs = others.merge(base, on=PAIR_KEYS, suffixes=("", "_base"))
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    pairs["diff"] = pairs["iou"] - pairs["iou_base"]

    def compare(group: pd.DataFrame) -> pd.Series:
        ci = mean_ci(group["diff"].to_numpy(), group["seed"].to_numpy(), n_resamples=n_resamples)
        return pd.Series(
            {"pairs": ci.n, "seeds": ci.groups, "mean": ci.mean, "low": ci.low, "high": ci.high,
             "p": wilcoxon_p(group["diff"].to_numpy())}
        )

    table = pairs.groupby(["algo", "k", "line"]).apply(compare, include_groups=False).reset_index()
    table["p_holm"] = table.groupby(["algo", "k"])["p"].transform(lambda p: holm(p.to_numpy()))
    return table.astype({"pairs": int, "seeds": int})[columns]


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
