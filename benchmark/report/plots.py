"""The report's figures (PNG, matplotlib's Agg backend, seaborn styling).

Error bars and bands are the report's own 95% intervals (:mod:`benchmark.stats`), not
seaborn's, so the plots and the tables agree. Each algorithm keeps one colour across all figures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from benchmark.report.records import REFERENCE_SUFFIX  # noqa: E402
from benchmark.report.summaries import LINE_ORDER, algo_order  # noqa: E402
from tasks.errors import DataError  # noqa: E402

EXAMPLE_ARRAYS = ("image", "truth", "prediction")


def _palette(algos: list[str]) -> dict[str, tuple]:
    return dict(zip(algos, sns.color_palette("colorblind", len(algos))))


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def held_out_bars(cells: pd.DataFrame, path: Path) -> Path:
    """Final-step IoU on each line when held out: bars per algorithm with 95% CIs, one panel per k."""
    held = cells[cells["line"] == cells["holdout"]]
    algos = algo_order(held["algo"].unique())
    colours = _palette(algos)
    ks = sorted(held["k"].unique())
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(len(ks), 1, figsize=(11, 3.6 * len(ks)), sharey=True, squeeze=False)
    width = 0.8 / len(algos)
    for ax, k in zip(axes[:, 0], ks):
        for i, algo in enumerate(algos):
            mine = held[(held["algo"] == algo) & (held["k"] == k)].set_index("holdout").reindex(LINE_ORDER)
            x = np.arange(len(LINE_ORDER)) + (i - (len(algos) - 1) / 2) * width
            err = np.vstack([mine["mean"] - mine["low"], mine["high"] - mine["mean"]])
            ax.bar(x, mine["mean"], width, color=colours[algo], label=algo)
            ax.errorbar(x, mine["mean"], yerr=err, fmt="none", ecolor="0.2", elinewidth=1, capsize=2)
            for xi in x[mine["mean"].isna().to_numpy()]:
                ax.text(xi, 0.01, "—", ha="center", va="bottom", color=colours[algo], fontsize=9)
        ax.set_xticks(np.arange(len(LINE_ORDER)), LINE_ORDER)
        ax.set_ylim(0, 1)
        ax.set_ylabel("IoU after adaptation")
        ax.set_title(f"Held-out IoU, k={k} support image{'s' if k > 1 else ''} (mean, 95% CI over test images)")
    axes[-1, 0].set_xlabel("held-out cell line (— : not run yet)")
    axes[0, 0].legend(title="algorithm", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return _save(fig, path)


def adaptation_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Held-out IoU against adaptation step (step 0 = before adapting): one panel per held-out line and k,
    wrapped about four panels to a row (the k panels of one line side by side)."""
    everything = algo_order(curves["algo"].unique())
    algos = [a for a in everything if not a.endswith(REFERENCE_SUFFIX)]
    colours = _palette(algos)
    styles = _reference_styles(curves, [a for a in everything if a.endswith(REFERENCE_SUFFIX)])
    steps = (curves["step"].min(), curves["step"].max())
    ks = sorted(curves["k"].unique())
    lines = [line for line in LINE_ORDER if line in set(curves["holdout"])]
    panels = [(line, k) for line in lines for k in ks]
    ncols = len(ks) * min(len(lines), max(1, 4 // len(ks)))
    nrows = -(-len(panels) // ncols)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 1.5, 2.8 * nrows), sharex=True, sharey=True, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        line, k = panels[i]
        panel = curves[(curves["k"] == k) & (curves["holdout"] == line)]
        if panel.empty:
            ax.text(0.5, 0.5, "not run yet", transform=ax.transAxes, ha="center", va="center", color="0.5")
        for algo in algos:
            mine = panel[panel["algo"] == algo].sort_values("step")
            if mine.empty:
                continue
            ax.plot(mine["step"], mine["mean"], color=colours[algo], label=algo, marker=".", lw=1.5)
            ax.fill_between(mine["step"], mine["low"], mine["high"], color=colours[algo], alpha=0.2, lw=0)
        _reference_lines(ax, panel, styles, steps)
        ax.set_ylim(0, 1)
        ax.set_title(f"{line} held out, k={k}", fontsize=10)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)
        if i + ncols >= len(panels):  # nothing below it
            ax.set_xlabel("adaptation step")
        if i % ncols == 0:
            ax.set_ylabel("IoU")
    handles = [plt.Line2D([], [], color=colours[a], marker=".", label=a) for a in algos]
    if styles:
        handles.append(plt.Line2D([], [], ls="none", label="references, same episodes:"))
        handles += [plt.Line2D([], [], color=REFERENCE_GREY, ls=style, label=name.removesuffix(REFERENCE_SUFFIX)) for name, style in styles.items()]
    fig.legend(handles=handles, title="algorithm", loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.suptitle("Adaptation curves on the held-out line (mean, 95% CI over test images)")
    fig.tight_layout()
    return _save(fig, path)


REFERENCE_GREY = "0.45"
CONSTANT_STYLES = ("-", ":", "-.", (0, (1, 3)))  # references that do not adapt: horizontal lines


def _reference_styles(curves: pd.DataFrame, references: list[str]) -> dict[str, object]:
    """A grey line style per reference: those with one step (a threshold does not adapt) get solid, dotted,
    dash-dotted... lines; those that adapt (``scratch``) are dashed curves."""
    adapts = curves.groupby("algo")["step"].nunique() > 1
    constant = iter(CONSTANT_STYLES * len(references))
    return {name: "--" if adapts[name] else next(constant) for name in references}


def _reference_lines(ax: plt.Axes, panel: pd.DataFrame, styles: dict[str, object], steps: tuple[int, int]) -> None:
    """The panel's references in grey, beneath the algorithms: a horizontal line at its mean for one that does
    not adapt, else its curve over the steps; each named at its right end, names pushed apart where lines are
    close (an algorithm on a reference's line hides the line, not the name)."""
    ends = []
    for name, style in styles.items():
        mine = panel[panel["algo"] == name].sort_values("step")
        if mine.empty:
            continue
        if len(mine) == 1:
            x, y = np.array(steps), np.repeat(mine["mean"].to_numpy(), 2)
        else:
            x, y = mine["step"].to_numpy(), mine["mean"].to_numpy()
        ax.plot(x, y, color=REFERENCE_GREY, ls=style, lw=1.2, zorder=1)
        ends.append((y[-1], name))
    placed = -1.0
    for y, name in sorted(ends):
        placed = max(y, placed + LABEL_GAP)
        ax.text(steps[1], placed + 0.01, name.removesuffix(REFERENCE_SUFFIX), ha="right", va="bottom", fontsize=7, color="0.3")


LABEL_GAP = 0.065  # IoU between two reference names on a panel of height 1


def load_example(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one ``examples.npz``: image uint8 [q,H,W], truth and prediction bool [q,H,W]."""
    with np.load(path) as data:
        missing = [name for name in EXAMPLE_ARRAYS if name not in data]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}")
        arrays = {name: data[name] for name in EXAMPLE_ARRAYS}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or arrays["image"].ndim != 3:
        raise DataError(f"{path}: image, truth and prediction must share one [q, H, W] shape; got {shapes}")
    return arrays


def _iou(truth: np.ndarray, prediction: np.ndarray) -> float:
    union = np.logical_or(truth, prediction).sum()
    return 1.0 if union == 0 else float(np.logical_and(truth, prediction).sum() / union)


def example_grid(runs: pd.DataFrame, line: str, k: int, path: Path) -> Path | None:
    """Query image 0 of held-out episode 0 on ``line``: image, truth, prediction; one row per algorithm.

    Uses each algorithm's lowest seed that has an ``examples.npz``; None when no run has one.
    """
    chosen = runs[(runs["holdout"] == line) & (runs["k"] == k)].sort_values("seed")
    examples = {}
    for algo in algo_order(chosen["algo"].unique()):
        for run in chosen[chosen["algo"] == algo].itertuples():
            if (run.folder / "examples.npz").is_file():
                examples[algo] = (run.seed, load_example(run.folder / "examples.npz"))
                break
    if not examples:
        return None
    sns.set_theme(style="white")
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.5 * len(examples)), squeeze=False)
    for row, (algo, (seed, arrays)) in zip(axes, examples.items()):
        image, truth, prediction = (arrays[name][0] for name in EXAMPLE_ARRAYS)
        row[0].imshow(image, cmap="gray", vmin=0, vmax=255)
        row[1].imshow(truth, cmap="gray", vmin=0, vmax=1)
        row[2].imshow(prediction, cmap="gray", vmin=0, vmax=1)
        row[0].set_ylabel(f"{algo}\nseed {seed}", fontsize=10)
        row[2].set_title(f"IoU {_iou(truth, prediction):.3f}", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], ("image", "truth", "prediction")):
        ax.set_title(name if name != "prediction" else f"prediction, {ax.get_title()}", fontsize=10)
    fig.suptitle(f"{line} held out, k={k}: query image of episode 0 after adaptation")
    fig.tight_layout()
    return _save(fig, path)
