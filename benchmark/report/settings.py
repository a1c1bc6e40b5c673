"""Another setting of the same grid, compared run for run: does the ranking hold with 10x the meta-training?

A results folder holds one setting (:func:`records.completed_runs` refuses a mix). A folder inside it with runs of
its own is another setting (``sweep --preset long --out results/long``). Its runs that share (algorithm, held-out
line, k, seed) with the main folder's scored the same episodes, provided the settings that draw and score them are
equal (:data:`SAME_EPISODES`): then each algorithm's held-out IoU there minus here is paired per test image and
seed, and the algorithms' order on a held-out line can be compared. The references do not depend on meta-training
(the untrained initialisation and classical rules on the same crops), so the best one is shown once, from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.report.records import PER_RUN, PROTOCOLS, completed_runs, is_results_folder, load_episodes, load_units
from benchmark.report.summaries import best_references, cell_summary, compare_pairs, is_reference, ordered
from benchmark.report.tables import interval, markdown, p_value, reference_name
from benchmark.stats import PRACTICAL_DIFFERENCE

GRID = ["algo", "holdout", "k", "seed"]
SAME_EPISODES = ("data", "data_root", "crop", "eval_queries", "eval_episodes", "seen_episodes", "inner_steps")
PROVENANCE = ("run_id", "numerics_version", "packages", "git_commit", "python", "machine")  # not settings
COLUMNS = ["setting", "protocol", "holdout", "k", "algo", "here", "there", "best_reference", "reference_mean",
           "pairs", "seeds", "images", "mean", "low", "high", "p", "p_holm", "verdict"]


@dataclass(frozen=True)
class Setting:
    """One other setting: its folder's name, what differs from the main folder, its compared runs' table (or why
    none), and per (protocol, held-out line, k) the algorithms' order here and there."""

    name: str
    here: str  # what to call this folder's setting: its preset
    changes: list[str]
    table: pd.DataFrame
    orders: list[dict]
    excluded: str | None = None


def other_folders(results: Path) -> list[Path]:
    """Folders directly inside ``results`` that are results folders of their own (a ``runs/`` inside)."""
    return [path for path in sorted(Path(results).iterdir()) if path.is_dir() and is_results_folder(path)]


def setting_of(runs: pd.DataFrame) -> dict:
    """The configuration the runs share (the first run's, less the grid and provenance, with the preset it started
    from), with their data."""
    summary = json.loads((Path(runs["folder"].iloc[0]) / "summary.json").read_text())
    config = summary.get("config") or {}
    kept = {key: value for key, value in config.items() if key == "preset" or key not in (*PER_RUN, *PROVENANCE)}
    return kept | {"data": summary.get("data")}


def changes_between(here: dict, there: dict) -> list[str]:
    """``meta_steps 100 → 1000``, one per setting that differs, in name order."""
    return [f"{key} {here.get(key)!s} → {there.get(key)!s}" for key in sorted(here.keys() | there.keys()) if here.get(key) != there.get(key)]


def _orders(cells: pd.DataFrame) -> dict:
    own = cells[~is_reference(cells["algo"])]
    return {key: list(group.sort_values("mean", ascending=False, kind="stable")["algo"]) for key, group in own.groupby(["holdout", "k"])}


def compare(runs: pd.DataFrame, other: pd.DataFrame, name: str, threshold: float = PRACTICAL_DIFFERENCE) -> Setting:
    """``other``'s runs against ``runs``' of the same grid point, under each protocol both recorded."""
    here_setting, there_setting = setting_of(runs), setting_of(other)
    changes = changes_between(here_setting, there_setting)
    here_name = str(here_setting.get("preset") or "here")
    differ = [key for key in SAME_EPISODES if here_setting.get(key) != there_setting.get(key)]
    if differ:
        return Setting(name, here_name, changes, pd.DataFrame(columns=COLUMNS), [], f"its episodes differ ({', '.join(differ)})")
    matched = runs.merge(other[GRID], on=GRID)
    there_runs = other.merge(runs[GRID], on=GRID)
    if matched.empty:
        return Setting(name, here_name, changes, pd.DataFrame(columns=COLUMNS), [], "no run shares an algorithm, held-out line, k and seed with this folder")
    tables, orders = [], []
    for protocol in PROTOCOLS:
        here = load_units(matched, load_episodes(matched, protocol), protocol)
        there = load_units(there_runs, load_episodes(there_runs, protocol), protocol)
        if here.empty or there.empty:
            continue
        here, there = here[here["role"] == "held-out"], there[(there["role"] == "held-out") & ~is_reference(there["algo"])]
        cells_here, cells_there = cell_summary(here), cell_summary(there)
        keys = ["algo", "holdout", "k", "seed", "line", "unit"]
        pairs = there[there["final"]][[*keys, "iou"]].merge(here[here["final"]][[*keys, "iou", "weight"]], on=keys, suffixes=("", "_here"))
        if pairs.empty:
            continue
        pairs["diff"] = pairs["iou"] - pairs["iou_here"]
        table = compare_pairs(pairs, ["algo", "k", "holdout"], ["algo", "k"], threshold)
        means = ["algo", "k", "holdout", "mean"]
        table = (table.merge(cells_here[means].rename(columns={"mean": "here"}), on=["algo", "k", "holdout"])
                 .merge(cells_there[means].rename(columns={"mean": "there"}), on=["algo", "k", "holdout"])
                 .merge(best_references(cells_here, ["k", "holdout"]), on=["k", "holdout"], how="left"))
        tables.append(ordered(table.rename(columns={"reference": "best_reference"})).assign(setting=name, protocol=protocol))
        compared = set(table["algo"])
        ours, theirs = _orders(cells_here[cells_here["algo"].isin(compared)]), _orders(cells_there[cells_there["algo"].isin(compared)])
        orders += [{"protocol": protocol, "holdout": line, "k": k, "here": ours[line, k], "there": theirs[line, k]}
                   for line, k in sorted(ours.keys() & theirs.keys())]
    table = pd.concat(tables, ignore_index=True)[COLUMNS] if tables else pd.DataFrame(columns=COLUMNS)
    return Setting(name, here_name, changes, table, orders)


def compare_all(results: Path, runs: pd.DataFrame, threshold: float = PRACTICAL_DIFFERENCE) -> list[Setting]:
    """Every other setting inside ``results`` (:func:`other_folders`) that has completed runs of today's code."""
    found = []
    for folder in other_folders(results):
        other = completed_runs(folder)
        if len(other):
            found.append(compare(runs, other, folder.name, threshold))
    return found


def _order_line(setting: Setting, order: dict) -> str:
    where = f"{order['holdout']}, k = {order['k']}, {order['protocol']} protocol"
    if order["here"] == order["there"]:
        return f"{where}: the same order, {' > '.join(order['here'])}"
    return f"{where}: {' > '.join(order['here'])} ({setting.here}), {' > '.join(order['there'])} ({setting.name})"


def markdown_of(setting: Setting, threshold: float) -> str:
    """One setting's section: what differs, the paired table, the orders."""
    head = f"### `{setting.name}`\n\nIts settings against this folder's: {'; '.join(setting.changes) or 'none differ'}.\n"
    if setting.excluded:
        return head + f"\nNot compared: {setting.excluded}.\n"
    header = ["protocol", "held-out line", "k", "algorithm", f"here ({setting.here})", f"there ({setting.name})", "there minus here [95% CI]", "verdict",
              "Holm p", "seeds", "images", "best reference (here)"]
    rows = [[r.protocol, r.holdout, str(r.k), r.algo, f"{r.here:.3f}", f"{r.there:.3f}", interval(r.mean, r.low, r.high, signed=True),
             r.verdict, p_value(r.p_holm), str(r.seeds), str(r.images),
             f"{reference_name(r.best_reference)} {r.reference_mean:.3f}" if isinstance(r.best_reference, str) else "—"]
            for r in setting.table.itertuples()]
    orders = "".join(f"- {_order_line(setting, order)}\n" for order in setting.orders)
    return (head + "\n" + markdown(header, rows, right_from=4) + "\nThe algorithms' order by mean held-out IoU (references "
            f"left out):\n\n{orders}\nVerdicts as elsewhere in this report: below {threshold:g} IoU \"no difference\", else "
            "\"higher\" or \"lower\" when Holm p < 0.05 (across the held-out lines of each algorithm, k and protocol), "
            "else \"unclear\".\n")


def report(settings: list[Setting], out: Path, tables: str, threshold: float = PRACTICAL_DIFFERENCE) -> tuple[str, list[Path]]:
    """The index section and the files (``settings.md``, ``settings.csv``); nothing where there is no other setting."""
    if not settings:
        return "", []
    folder = Path(out) / tables
    folder.mkdir(parents=True, exist_ok=True)
    body = "\n".join(markdown_of(setting, threshold) for setting in settings)
    (folder / "settings.md").write_text("# Other settings of the same grid\n\n" + body)
    frames = [s.table for s in settings if len(s.table)]
    (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)).to_csv(folder / "settings.csv", index=False, float_format="%.6g")
    section = (
        "## Other settings of the same grid\n\n"
        "Each folder inside the results folder with runs of its own is another setting (e.g. `sweep --preset long --out "
        "results/long`). Its runs that share an algorithm, held-out line, k and seed with this folder's scored the same "
        "episodes, so \"there minus here\" is paired per test image and seed, under each protocol; \"here\" and \"there\" "
        "are the two means on those runs only. The references do not depend on meta-training: the best one of each "
        f"held-out line is shown once. [Markdown]({tables}/settings.md), [CSV]({tables}/settings.csv).\n\n" + body
    )
    return section, [folder / "settings.md", folder / "settings.csv"]


def finding(settings: list[Setting], to: str, protocol: str = "tuned") -> list[str]:
    """Per compared setting: whether the algorithms' order held on each held-out line and k (both protocols),
    and each algorithm's difference under ``protocol`` (the headline's)."""
    said = []
    for setting in settings:
        if setting.excluded or setting.table.empty:
            continue
        held = [o for o in setting.orders if o["here"] == o["there"]]
        orders = "; ".join(_order_line(setting, o) for o in setting.orders)
        mine = setting.table[setting.table["protocol"] == protocol]
        mine = mine if len(mine) else setting.table[setting.table["protocol"] == setting.table["protocol"].iloc[0]]
        differences = ", ".join(
            f"{r.algo} {r.here:.3f} → {r.there:.3f} ({interval(r.mean, r.low, r.high, signed=True)}, {r.verdict})"
            for r in mine.itertuples())
        said.append(
            f"Under `{setting.name}` ({'; '.join(setting.changes)}), on the runs it shares with the main grid (same algorithm, held-out line, k and seed), the algorithms' "
            f"order by mean held-out IoU held on {len(held)} of {len(setting.orders)} (held-out line, k, protocol) cells "
            f"({orders}); {mine['protocol'].iloc[0]} protocol, {differences} "
            f"([settings.md]({to}settings.md))."
        )
    return said
