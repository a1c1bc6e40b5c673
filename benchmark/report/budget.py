"""Budget curves: validation IoU along meta-training, from the points each run records in ``train_log.csv``.

A ranking read off the final meta-step may be a property of the budget rather than of the algorithms: one that
has not started to learn at 100 meta-steps may lead at 1,000. The points are scored on validation episodes of the
meta-training lines (never the held-out line), after the algorithm's own adaptation (``val_iou_n``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.report.plots import plt  # with the headless backend chosen
from benchmark.report.summaries import algo_order

COLUMNS = ["algo", "holdout", "k", "seed", "step", "passes", "val_iou_0", "val_iou_n"]


def budget_points(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run and budget point: meta-step, forward-backward passes spent so far, validation IoU before
    and after adaptation. Runs recorded without budget points contribute none."""
    frames = []
    for run in runs.itertuples():
        path = Path(run.folder) / "train_log.csv"
        if not path.is_file():
            continue
        log = pd.read_csv(path)
        if "val_iou_n" not in log.columns:
            continue
        log["passes"] = log["passes"].fillna(0).cumsum()
        points = log.dropna(subset=["val_iou_n"])
        frames.append(points.assign(algo=run.algo, holdout=run.holdout, k=run.k, seed=run.seed)[COLUMNS])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def ranking_at_half(points: pd.DataFrame) -> list[str]:
    """For each (held-out line, k, seed) with two or more algorithms: whether their order by validation IoU at the
    budget point nearest half the final meta-step is already the final order."""
    said = []
    for (line, k, seed), group in points.groupby(["holdout", "k", "seed"]):
        if group["algo"].nunique() < 2:
            continue
        last = group["step"].max()
        half = group.loc[(group["step"] - last / 2).abs().idxmin(), "step"]

        def order(step):
            at = group[group["step"] == step].sort_values("val_iou_n", ascending=False)
            return list(at["algo"])

        final, early = order(last), order(half)
        verdict = "already held" if early == final else f"was {' > '.join(early)}"
        said.append(f"{line}, k = {k}, seed {seed}: final order {' > '.join(final)} (step {last}); at step {half} it {verdict}")
    return said


def plot(points: pd.DataFrame, path: Path) -> Path:
    """Validation IoU after adaptation against meta-step, one line per algorithm (mean over held-out lines and
    seeds), one panel per k."""
    ks = sorted(points["k"].unique())
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 3.6), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], ks):
        mine = points[points["k"] == k]
        for algo in algo_order(mine["algo"].unique()):
            curve = mine[mine["algo"] == algo].groupby("step")["val_iou_n"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=algo)
        ax.set_title(f"k = {k}")
        ax.set_xlabel("meta-step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation IoU after adaptation")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
