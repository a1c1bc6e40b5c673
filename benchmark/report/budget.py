"""Budget curves: validation IoU along meta-training, from the points each run records in ``train_log.csv``.

A ranking read off the final meta-step may be a property of the budget rather than of the algorithms: one that
has not started to learn at 100 meta-steps may lead at 1,000. The points are scored on validation episodes of the
meta-training lines (never the held-out line), after the algorithm's own adaptation (``val_iou_n``).

A meta-step is not the same budget for every algorithm: a second-order one differentiates its inner steps twice.
So each point also carries the FLOPs of meta-training spent so far (convolutions and matrix products, from the
run's ``flops_per_step``; counted from its configuration for runs recorded before it was), and the algorithms are
compared at equal FLOPs as well as at equal meta-steps. The references are not scored on validation episodes, so
the curves have no reference level.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from benchmark.report.plots import plt  # with the headless backend chosen
from benchmark.report.summaries import algo_order

COLUMNS = ["algo", "holdout", "k", "seed", "step", "passes", "flops", "val_iou_0", "val_iou_n"]
CELL = ["holdout", "k", "seed"]
EQUAL_FLOPS_COLUMNS = [*CELL, "budget_flops", "algo", "step", "flops", "val_iou_n", "rank"]


def flop_pieces(folder: Path) -> list:
    """A run's FLOPs per meta-step, ``[first, end, FLOPs each]`` pieces, as its summary records them or, for a run
    recorded before it did (or that failed to count them), counted from its configuration (a few meta-steps, once
    per configuration)."""
    summary = json.loads((Path(folder) / "summary.json").read_text())
    if summary.get("flops_per_step"):  # absent, or empty where the run could not count them
        return summary["flops_per_step"]
    from benchmark.bench.flops import stored_schedule  # loads torch, only for such runs

    return list(stored_schedule(summary["config"]))


def flops_through(pieces: list, step: int) -> int:
    """FLOPs of the first ``step`` meta-steps: what a run had spent at the budget point it logged at ``step``."""
    return sum(max(0, min(end, step) - first) * flops for first, end, flops in pieces)


def budget_points(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run and budget point: meta-step, forward-backward passes and FLOPs spent so far, validation IoU
    before and after adaptation. Runs recorded without budget points contribute none."""
    frames = []
    for run in runs.itertuples():
        path = Path(run.folder) / "train_log.csv"
        if not path.is_file():
            continue
        log = pd.read_csv(path)
        if "val_iou_n" not in log.columns:
            continue
        log["passes"] = log["passes"].fillna(0).cumsum()
        points = log.dropna(subset=["val_iou_n"]).copy()
        pieces = flop_pieces(run.folder)
        points["flops"] = [flops_through(pieces, int(step)) for step in points["step"]]
        frames.append(points.assign(algo=run.algo, holdout=run.holdout, k=run.k, seed=run.seed)[COLUMNS])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def _compared(points: pd.DataFrame):
    """The (held-out line, k, seed) cells of two or more algorithms, with their points."""
    for cell, group in points.groupby(CELL):
        if group["algo"].nunique() >= 2:
            yield cell, group


def _order(at: pd.DataFrame) -> list[str]:
    return list(at.sort_values("val_iou_n", ascending=False, kind="stable")["algo"])


def orders_at_half(points: pd.DataFrame) -> list[dict]:
    """For each (held-out line, k, seed) with two or more algorithms: their order by validation IoU at the last
    budget point (``final``, at ``last``) and at the point nearest half of it (``early``, at ``half``)."""
    orders = []
    for (line, k, seed), group in _compared(points):
        last = group["step"].max()
        half = group.loc[(group["step"] - last / 2).abs().idxmin(), "step"]
        orders.append({"line": line, "k": k, "seed": seed, "last": last, "half": half,
                       "final": _order(group[group["step"] == last]), "early": _order(group[group["step"] == half])})
    return orders


def ranking_at_half(orders: list[dict]) -> list[str]:
    """:func:`orders_at_half` in words: whether the order at half the budget is already the final one."""
    said = []
    for o in orders:
        verdict = "already held" if o["early"] == o["final"] else f"was {' > '.join(o['early'])}"
        said.append(f"{o['line']}, k = {o['k']}, seed {o['seed']}: final order {' > '.join(o['final'])} (step {o['last']}); at step {o['half']} it {verdict}")
    return said


def at_equal_flops(points: pd.DataFrame) -> pd.DataFrame:
    """For each (held-out line, k, seed) with two or more algorithms: the largest FLOP budget every one of them
    reached (the least total among them) and each algorithm's last budget point within it, ranked by validation IoU
    after adaptation. An algorithm with no point within it (none logged at step 0) is left out."""
    rows = []
    for _, group in _compared(points):
        budget = group.groupby("algo")["flops"].max().min()
        within = group[group["flops"] <= budget].sort_values("step")
        at = within.groupby("algo").tail(1).sort_values("val_iou_n", ascending=False, kind="stable")
        rows.append(at.assign(budget_flops=budget, rank=range(1, len(at) + 1)))
    return pd.concat(rows, ignore_index=True)[EQUAL_FLOPS_COLUMNS] if rows else pd.DataFrame(columns=EQUAL_FLOPS_COLUMNS)


def ranking_at_equal_flops(equal: pd.DataFrame) -> list[str]:
    """:func:`at_equal_flops` in words, one sentence per cell."""
    said = []
    for (line, k, seed), at in equal.groupby(CELL, sort=False):
        order = " > ".join(f"{row.algo} (step {row.step})" for row in at.itertuples())
        said.append(f"{line}, k = {k}, seed {seed}, at {at['budget_flops'].iloc[0] / 1e12:.3g} TFLOP: {order}")
    return said


def plot(points: pd.DataFrame, path: Path) -> Path:
    """Validation IoU after adaptation against meta-step (top) and against meta-training FLOPs (bottom), one line
    per algorithm (mean over held-out lines and seeds, which share a step's FLOPs), one column per k."""
    ks = sorted(points["k"].unique())
    fig, axes = plt.subplots(2, len(ks), figsize=(5 * len(ks), 7), squeeze=False, sharey=True)
    for column, k in enumerate(ks):
        mine = points[points["k"] == k]
        for algo in algo_order(mine["algo"].unique()):
            curve = mine[mine["algo"] == algo].groupby("step")[["flops", "val_iou_n"]].mean()
            axes[0][column].plot(curve.index, curve["val_iou_n"], marker="o", label=algo)
            axes[1][column].plot(curve["flops"] / 1e12, curve["val_iou_n"], marker="o", label=algo)
        axes[0][column].set_title(f"k = {k}")
        axes[0][column].set_xlabel("meta-step")
        axes[1][column].set_xlabel("meta-training TFLOP")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation IoU after adaptation")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(runs: pd.DataFrame, out: Path, tables: str, plots: str, write_csv: Callable[[Path, pd.DataFrame], Path]) -> tuple[list[str], list[Path], list[dict]]:
    """The report's budget section (Markdown paragraphs), the files behind it, written under ``out`` (tables
    with the report's ``write_csv``), and the orders at half the budget (:func:`orders_at_half`) for the findings."""
    points = budget_points(runs)
    if not len(points):
        return ["## Budget curves\n", "No run in this folder recorded budget points (`budget_every`).\n"], [], []
    equal = at_equal_flops(points)
    written = [write_csv(out / tables / "budget_curves.csv", points), write_csv(out / tables / "budget_equal_flops.csv", equal),
               plot(points, out / plots / "budget_curves.png")]
    orders = orders_at_half(points)
    half, flops = ranking_at_half(orders), ranking_at_equal_flops(equal)
    return [
        "## Budget curves\n",
        "Validation IoU after adaptation (episodes of the meta-training lines' val split, never the held-out line) "
        "along meta-training, mean over held-out lines and seeds: does a ranking hold with less budget? Against "
        "meta-steps (top) and against the FLOPs of meta-training (bottom: convolutions and matrix products, so a "
        "second-order meta-step costs what it computes). "
        f"[CSV]({tables}/budget_curves.csv) (with forward-backward passes and FLOPs spent).\n",
        f"![Budget curves]({plots}/budget_curves.png)\n",
        *([("At half the budget: " + "; ".join(half) + ".\n")] if half else []),
        *([("At equal FLOPs (the largest budget every algorithm reached, each at its last point within it): "
            + "; ".join(flops) + f". [CSV]({tables}/budget_equal_flops.csv).\n")] if flops else []),
    ], written, orders
