"""The README's results: the headline table (held-out IoU at k = 3, tuned protocol, references beside the
algorithms) and the findings, sentences generated from the report's tables, each naming the table it reads.

The README embeds ``readme.md`` (the headline table and the findings, written by ``report``) verbatim between two
markers and a test compares the two, so every number there is one that ``report`` produces from the committed
records. A column's best entry is marked only
where it beats the runner-up on the same test images and seeds by more than the practical threshold
(:func:`summaries.leader_differences`): two means a hair apart, or apart within their noise, are no ranking.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from benchmark.observations import COLLAPSE_FOREGROUND
from benchmark.report.records import REFERENCE_SUFFIX
from benchmark.report.settings import finding as settings_finding
from benchmark.report.summaries import LINE_ORDER, algo_order, is_reference, leader_differences, ordered
from benchmark.report.tables import MISSING, interval, reference_name
from benchmark.report.tables import markdown as table_markdown
from benchmark.stats import PRACTICAL_DIFFERENCE

K = 3  # the headline's number of support images
SEEDS = 3  # the reference sweep's seeds per cell (issue 16); a cell with fewer says how many
VERDICTS = ("higher", "lower", "no difference", "unclear")  # the order findings count them in


def _held_out_at_k(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["role"] == "held-out") & (frame["k"] == K)]


def leaders(units: pd.DataFrame, cells: pd.DataFrame, threshold: float = PRACTICAL_DIFFERENCE) -> pd.DataFrame:
    """Each headline column's best method minus its runner-up, paired, with ``marked``: the difference is above
    ``threshold`` and its 95% interval above 0."""
    table = leader_differences(_held_out_at_k(units), _held_out_at_k(cells), ["k", "line"], threshold)
    return table.assign(marked=(table["mean"] > threshold) & (table["low"] > 0))


def _method(algo: str) -> str:
    return f"*{reference_name(algo)}* (reference)" if algo.endswith(REFERENCE_SUFFIX) else algo


def _cell(row, marked: bool) -> str:
    text = interval(row["mean"], row["low"], row["high"])
    text = f"**{text}**" if marked else text
    seeds = int(row["seeds"])
    return text if seeds >= SEEDS else f"{text} ({seeds} seed{'s' if seeds > 1 else ''})"


def headline(units: pd.DataFrame, cells: pd.DataFrame, runs: pd.DataFrame, threshold: float = PRACTICAL_DIFFERENCE) -> tuple[str, pd.DataFrame]:
    """Markdown and tidy CSV: rows every algorithm of ``runs`` then the references, columns the held-out lines of
    ``runs``; each cell the tuned protocol's held-out IoU at k = 3 (``cells``, ``units``: tuned) over its seeds."""
    held = _held_out_at_k(cells).set_index(["algo", "line"])
    best = leaders(units, cells, threshold)
    marked = set(zip(best.loc[best["marked"], "algo"], best.loc[best["marked"], "line"]))
    lines = [line for line in LINE_ORDER if line in set(runs["holdout"])]
    algos = algo_order([*runs["algo"].unique(), *held.index.get_level_values("algo")])
    rows = [
        [_method(algo), *(_cell(held.loc[algo, line], (algo, line) in marked) if (algo, line) in held.index else MISSING for line in lines)]
        for algo in algos
    ]
    text = table_markdown(["method", *lines], rows, right_from=1) + "\n" + _rule(threshold)
    return text, _tidy(held.reset_index(), best)


def _rule(threshold: float) -> str:
    return (
        f"Held-out IoU at k = {K}, tuned protocol (each algorithm adapted at the rate it selected on validation episodes "
        "of its meta-training lines; one that meta-learns its rates keeps them): the mean over the seeds present, with a 95% interval whose units are the test "
        f"images and seeds; \"(n seeds)\" marks a cell with fewer than {SEEDS} seeds, \"{MISSING}\" a combination not "
        "run. References in italics, ranked with the algorithms. **Bold**: the best entry of a column, marked only "
        "where it beats the second-best on the same test images and seeds by more than the practical threshold: "
        f"mean paired difference above {threshold:g} IoU and its 95% interval above 0; otherwise nothing is marked.\n"
    )


def _tidy(held: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """One row per cell; the best method of a column also holds its difference to the runner-up and the mark."""
    difference = best.rename(columns={"mean": "diff", "low": "diff_low", "high": "diff_high"})
    table = held.merge(difference[["algo", "line", "runner_up", "diff", "diff_low", "diff_high", "marked"]], on=["algo", "line"], how="left")
    table = table.assign(reference=is_reference(table["algo"]), best=table["runner_up"].notna(), marked=table["marked"].eq(True))
    columns = ["line", "algo", "reference", "k", "mean", "low", "high", "seeds", "images", "episodes", "best", "runner_up", "diff",
               "diff_low", "diff_high", "marked"]
    return ordered(table)[columns]


def _orders(cells: pd.DataFrame) -> dict:
    """(held-out line, k) -> the algorithms (references left out) by mean IoU, highest first."""
    held = cells[(cells["role"] == "held-out") & ~is_reference(cells["algo"])]
    return {key: list(group.sort_values("mean", ascending=False)["algo"]) for key, group in held.groupby(["holdout", "k"])}


def rank_changes(seed_cells: pd.DataFrame, tuned_cells: pd.DataFrame) -> list[str]:
    """Held-out cells (line, k) where the algorithms' order by mean IoU differs between the seed and the tuned
    protocol (references left out), as "MCF7, k = 3: reptile > finetune becomes finetune > reptile"."""
    seed, tuned = _orders(seed_cells), _orders(tuned_cells)
    return [
        f"{line}, k = {k}: {' > '.join(seed[line, k])} becomes {' > '.join(tuned[line, k])}"
        for line, k in sorted(seed.keys() & tuned.keys())
        if seed[line, k] != tuned[line, k]
    ]


def _link(to: str, *names: str) -> str:
    return "(" + ", ".join(f"[{name}]({to}{name})" for name in names) + ")"


def rank_finding(seed_cells: pd.DataFrame, tuned_cells: pd.DataFrame, to: str) -> str | None:
    """Over the held-out cells (line, k) with two or more algorithms: on how many the order changes between the
    protocols, and where the best algorithm changes (the full orders are in the report's tuned section)."""
    seed, tuned = _orders(seed_cells), _orders(tuned_cells)
    compared = sorted(key for key in seed.keys() & tuned.keys() if len(seed[key]) > 1)
    if not compared:
        return None
    changed = [key for key in compared if seed[key] != tuned[key]]
    if not changed:
        said = f"is the same on all {len(compared)} held-out cells (line, k) with two or more algorithms"
    else:
        leaders = [f"{line}, k = {k}: {seed[line, k][0]} → {tuned[line, k][0]}" for line, k in changed if seed[line, k][0] != tuned[line, k][0]]
        said = (f"changes on {len(changed)} of {len(compared)} held-out cells (line, k) with two or more algorithms; the best "
                + (f"algorithm changes on {len(leaders)} of them ({'; '.join(leaders)})" if leaders else "algorithm stays the same on all of them"))
    return (f"Seed protocol against tuned: the order of the algorithms by mean held-out IoU {said} "
            + _link(to, "leave_one_line_out.md", "leave_one_line_out_tuned.md") + ".")


def _signed(values: pd.Series) -> str:
    low, high = values.min(), values.max()
    return f"{low:+.3f}" if round(low, 3) == round(high, 3) else f"{low:+.3f} to {high:+.3f}"


def _verdict_counts(verdicts: pd.Series) -> str:
    """"higher on 2, no difference on 1 of 3"."""
    counts = Counter(verdicts)
    return ", ".join(f"{v} on {counts[v]}" for v in VERDICTS if counts[v]) + f" of {len(verdicts)}"


def k_finding(k_pairs: pd.DataFrame, to: str) -> str | None:
    """What the smaller k changes, per algorithm: its verdicts over the held-out lines and their differences."""
    own = ordered(k_pairs[~is_reference(k_pairs["algo"])]) if len(k_pairs) else k_pairs
    if own.empty:
        return None
    low, high = int(own["k_low"].min()), int(own["k"].max())
    per_algo = [f"{algo} {_verdict_counts(group['verdict'])} held-out line(s) ({_signed(group['mean'])})"
                for algo, group in own.groupby("algo", sort=False)]
    return (f"From k = {low} to k = {high} (seed protocol, paired per test image and seed; differences k = {high} minus "
            f"k = {low}): " + "; ".join(per_algo) + " " + _link(to, "k_effect.md") + ".")


def _runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def collapse_finding(counts: pd.DataFrame, to: str) -> str | None:
    """Which algorithms collapse (most held-out episodes predicted nearly all cell), in how many runs and on how
    many held-out lines; and which never did."""
    if counts.empty:
        return None
    down, never = [], []
    for algo in algo_order(counts["algo"].unique()):
        mine = counts[counts["algo"] == algo]
        hit = mine[mine["collapsed"]]
        if len(hit):
            down.append(f"{algo} in {len(hit)} of {_runs(len(mine))}, on {hit['holdout'].nunique()} of its "
                        f"{mine['holdout'].nunique()} held-out line(s)")
        else:
            never.append(f"{algo} ({_runs(len(mine))})")
    rule = f"more than {COLLAPSE_FOREGROUND:.0%} of the pixels predicted as cell on most held-out episodes after adaptation, seed protocol"
    said = f"Collapsed ({rule}): " + "; ".join(down) if down else f"No algorithm collapsed ({rule})"
    if never:
        said += ("; never: " if down else ": ") + ", ".join(never)
    return f"{said} " + _link(to, "collapse.md") + "."


def elsewhere_finding(methods: pd.DataFrame, to: str) -> list[str]:
    """Per dataset of ``evaluate``: the synthetic-trained algorithms' verdicts against the best reference of their
    block, and the algorithm that came closest to (or furthest above) it."""
    said = []
    scored = methods[~is_reference(methods["algo"]) & methods["diff"].notna()]
    for tag, mine in scored.groupby("evaluated_on", sort=False):
        top = mine.loc[mine["diff"].idxmax()]
        reference = methods.set_index(["algo", "evaluated_on", "holdout", "line", "k", "protocol"]).loc[
            (top["best_reference"], tag, top["holdout"], top["line"], top["k"], top["protocol"]), "mean"]
        said.append(
            f"On `{tag}`, the algorithms against the best reference of their block (line, held-out line, k, protocol): "
            f"{_verdict_counts(mine['verdict'])} entries; the largest difference: {top['algo']} on {top['line']} "
            f"(held out {top['holdout']}, k = {top['k']}, {top['protocol']} protocol) {top['mean']:.3f} against "
            f"{reference_name(top['best_reference'])} {reference:.3f}, "
            f"{interval(top['diff'], top['diff_low'], top['diff_high'], signed=True)} " + _link(to, "evaluated_elsewhere.md") + "."
        )
    return said


def budget_finding(orders: list[dict], to: str) -> str | None:
    """Whether the order at half the meta-training budget is the final one (:func:`budget.orders_at_half`: one per
    held-out line, k and seed), and where the leader at half the budget was not the final one."""
    if not orders:
        return None
    held = sum(o["early"] == o["final"] for o in orders)
    moved = [f"{o['line']}, k = {o['k']}, seed {o['seed']}: {o['early'][0]} at step {o['half']}, {o['final'][0]} at the end"
             for o in orders if o["early"][0] != o["final"][0]]
    leader = f"; the leader was already the final one on {len(orders) - len(moved)} of {len(orders)}" + (f" (not on {'; '.join(moved)})" if moved else "")
    return (f"At half the meta-training budget, the algorithms' order by validation IoU was already the final one on "
            f"{held} of {len(orders)} (held-out line, k, seed) combinations{leader} " + _link(to, "budget_curves.csv") + ".")


def findings(seed_cells, tuned_cells, k_pairs, counts, methods, held: list[dict], to: str, settings=()) -> str:
    """The findings as a Markdown list, links relative to ``to`` (the tables' folder as seen from the file);
    only sentences whose data exist. ``settings``: other settings of the grid (:func:`settings.compare_all`)."""
    said = [rank_finding(seed_cells, tuned_cells, to), k_finding(k_pairs, to), collapse_finding(counts, to),
            *elsewhere_finding(methods, to), budget_finding(held, to), *settings_finding(list(settings), to)]
    said = [sentence for sentence in said if sentence]
    return "".join(f"- {sentence}\n" for sentence in said) if said else "No findings: these records hold no data for any.\n"
