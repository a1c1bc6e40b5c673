"""The report's tables: Markdown for people, tidy CSV (one row per cell, numbers unformatted) for tools.

A cell that has not been run is shown as "—"; nothing is filled in.
"""

from __future__ import annotations

import math

import pandas as pd

from benchmark.report.records import PROTOCOLS, REFERENCE_SUFFIX
from benchmark.report.summaries import LINE_ORDER, algo_order, ordered

MISSING = "—"
COUNTS_NOTE = (
    "seeds: seeds per cell; images: distinct test images behind the cell, the interval's unit (0: records without "
    "per-image rows, whose interval is over episodes); episodes: evaluation episodes per cell, pooled over seeds "
    "(a range where cells differ).\n"
)
BASELINE_LABEL = "finetune"

# The seed paper's numbers: mean IoU on real LIVECell with MCF7 held out, U-Net with a VGG-11 encoder.
PUBLISHED = pd.DataFrame(
    [
        ("MAML", "maml", 1, 0.526),
        ("MAML", "maml", 3, 0.881),
        ("supervised baseline", "finetune", 1, 0.421),
        ("supervised baseline", "finetune", 3, 0.696),
    ],
    columns=["published_as", "algo", "k", "published"],
)
PUBLISHED_LINE = "MCF7"


def interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    """``0.712 [0.690, 0.731]``; a mean without an interval (one episode) shows ``[—]``."""
    f = "{:+.3f}" if signed else "{:.3f}"
    if math.isnan(low) or math.isnan(high):
        return f"{f.format(mean)} [{MISSING}]"
    return f"{f.format(mean)} [{f.format(low)}, {f.format(high)}]"


def p_value(p: float) -> str:
    if math.isnan(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def span(values) -> str:
    """A count that may differ between cells: ``40`` or ``10–40``."""
    values = [int(v) for v in values]
    if not values:
        return MISSING
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def markdown(header: list[str], rows: list[list[str]], right_from: int = 0) -> str:
    """A GitHub Markdown table; columns from ``right_from`` on are right-aligned."""
    rule = ["---:" if i >= right_from else "---" for i in range(len(header))]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def _row_keys(cells: pd.DataFrame) -> list[tuple[str, int]]:
    keys = cells[["algo", "k"]].drop_duplicates()
    return [(a, int(k)) for a in algo_order(keys["algo"]) for k in sorted(keys[keys["algo"] == a]["k"])]


def lolo(cells: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Rows algorithm x k, columns the 8 lines each when held out: final-step IoU with 95% CI."""
    held = cells[cells["line"] == cells["holdout"]]
    rows = []
    for algo, k in _row_keys(cells):
        mine = held[(held["algo"] == algo) & (held["k"] == k)].set_index("holdout")
        row = [algo, str(k)]
        row += [interval(*mine.loc[line, ["mean", "low", "high"]]) if line in mine.index else MISSING for line in LINE_ORDER]
        rows.append(row + [span(mine["seeds"]), span(mine["images"]), span(mine["episodes"])])
    header = ["algorithm", "k", *LINE_ORDER, "seeds", "images", "episodes"]
    csv = ordered(held.drop(columns=["line", "role"]))
    return markdown(header, rows, right_from=1) + "\n" + COUNTS_NOTE, csv


def seed_style(cells: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """For each held-out line: rows algorithm x k, all 8 lines as columns (7 seen, 1 held out)."""
    sections = []
    for holdout in [line for line in LINE_ORDER if line in set(cells["holdout"])]:
        mine = cells[cells["holdout"] == holdout]
        header = ["algorithm", "k"] + [f"**{line}** (held out)" if line == holdout else line for line in LINE_ORDER]
        rows = []
        for algo, k in _row_keys(mine):
            row_cells = mine[(mine["algo"] == algo) & (mine["k"] == k)].set_index("line")
            row = [algo, str(k)]
            for line in LINE_ORDER:
                row.append(interval(*row_cells.loc[line, ["mean", "low", "high"]]) if line in row_cells.index else MISSING)
            rows.append(row + [span(row_cells["seeds"]), span(row_cells["images"]), span(row_cells["episodes"])])
        sections.append(
            f"### {holdout} held out\n\n"
            + markdown([*header, "seeds", "images", "episodes"], rows, right_from=1)
        )
    return "\n".join(sections) + "\n" + COUNTS_NOTE, ordered(cells)


def paired(table: pd.DataFrame) -> str:
    """Long table: each algorithm minus fine-tuning, per held-out line and k."""
    rows = [
        [r.algo, str(r.k), r.line, str(r.seeds), str(r.images), interval(r.mean, r.low, r.high, signed=True),
         r.verdict, p_value(r.p), p_value(r.p_holm)]
        for r in ordered(table).itertuples()
    ]
    header = ["algorithm", "k", "held-out line", "seeds", "images", f"minus {BASELINE_LABEL} [95% CI]", "verdict", "p", "Holm p"]
    return markdown(header, rows, right_from=3)


def reference_name(algo: str) -> str:
    """``otsu (reference)`` -> ``otsu``."""
    return algo.removesuffix(REFERENCE_SUFFIX)


BEST_REFERENCE_NOTE = (
    "The best reference of a held-out line and k is the one with the highest mean IoU on these test episodes: chosen "
    "on the test episodes, it is a floor to clear, not a method one could pick in advance. The difference is paired "
    "per test image and seed; images: its unit.\n"
)


def best_reference(table: pd.DataFrame) -> str:
    """Long table: each algorithm minus the best reference of its held-out line and k, one section per protocol."""
    header = ["algorithm", "k", "held-out line", "best reference", "reference IoU", "algorithm IoU", "seeds", "images",
              "minus best reference [95% CI]", "verdict", "p", "Holm p"]
    sections = []
    for protocol in [p for p in PROTOCOLS if p in set(table["protocol"])]:
        rows = [
            [r.algo, str(r.k), r.line, reference_name(r.reference), f"{r.reference_mean:.3f}", f"{r.algo_mean:.3f}",
             str(r.seeds), str(r.images), interval(r.mean, r.low, r.high, signed=True), r.verdict, p_value(r.p), p_value(r.p_holm)]
            for r in ordered(table[table["protocol"] == protocol]).itertuples()
        ]
        sections.append(f"### {protocol.capitalize()} protocol\n\n" + markdown(header, rows, right_from=4))
    return BEST_REFERENCE_NOTE + "\n" + "\n".join(sections)


def k_effect(table: pd.DataFrame) -> str:
    """Long table: each algorithm's held-out IoU at the larger k minus the smaller, per held-out line."""
    rows = [
        [r.algo, f"{r.k} - {r.k_low}", r.line, str(r.seeds), str(r.images), interval(r.mean, r.low, r.high, signed=True),
         r.verdict, p_value(r.p), p_value(r.p_holm)]
        for r in ordered(table).itertuples()
    ]
    header = ["algorithm", "k", "held-out line", "seeds", "images", "difference [95% CI]", "verdict", "p", "Holm p"]
    return markdown(header, rows, right_from=3)


def published(cells: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The seed paper's MCF7 numbers next to ours for the corresponding algorithms and k."""
    ours = cells[(cells["holdout"] == PUBLISHED_LINE) & (cells["line"] == PUBLISHED_LINE)]
    table = PUBLISHED.merge(ours[["algo", "k", "mean", "low", "high", "seeds", "images", "episodes"]], on=["algo", "k"], how="left")
    rows = [
        [r.published_as, r.algo, str(r.k), f"{r.published:.3f}",
         MISSING if pd.isna(r.mean) else interval(r.mean, r.low, r.high)]
        for r in table.itertuples()
    ]
    header = [
        "seed paper's algorithm", "ours", "k",
        "seed paper: real LIVECell, VGG-11 U-Net, MCF7 held out",
        "this benchmark: these runs, MCF7 held out [95% CI]",
    ]
    return markdown(header, rows, right_from=2), table


def collapse(counts: pd.DataFrame) -> str:
    """One row per run: held-out episodes predicted nearly all cell before and after adaptation (seed protocol)."""
    rows = [[r.algo, str(r.k), r.holdout, str(r.seed), str(r.before), str(r.after), str(r.episodes), "yes" if r.collapsed else "no"]
            for r in ordered(counts).itertuples()]
    header = ["algorithm", "k", "held-out line", "seed", "collapsed episodes before adapting", "after", "of episodes", "run collapsed"]
    return markdown(header, rows, right_from=3)
