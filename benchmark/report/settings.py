"""Another setting of the same grid, compared run for run: does the ranking hold with 10x the meta-training?

A results folder holds one setting (:func:`records.completed_runs` refuses a mix). A folder inside it with runs of
its own is another setting (``sweep --preset long --out results/long``). Its runs that share (algorithm, held-out
line, k, seed) with the main folder's scored the same episodes, provided the settings that draw them are equal
(:data:`SAME_EPISODES`; every pair's crop count is checked too): then each algorithm's held-out IoU there minus here
is paired per test image and seed, and the two means and the algorithms' order come from those pairs alone. Where
both settings' runs were scored on other data alike (``evaluate``, e.g. real images; the same tag), those are paired
the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.report.records import (
    PER_RUN, PROTOCOLS, completed_runs, is_results_folder, load_episodes, load_evaluation_units, load_units, stale_runs,
)
from benchmark.report.summaries import CELL_KEYS, best_references, cell_summary, compare_pairs, is_reference, ordered
from benchmark.report.tables import interval, markdown, p_value, reference_name
from benchmark.stats import PRACTICAL_DIFFERENCE
from tasks.errors import DataError

GRID = ["algo", "holdout", "k", "seed"]
SAME_EPISODES = ("data", "crop", "eval_queries", "eval_episodes")  # what draws the held-out episodes, beside the grid
PAIR_KEYS = ["algo", "holdout", "k", "seed", "line", "unit"]
COLUMNS = ["setting", "evaluated_on", "protocol", "holdout", "k", "algo", "here", "there", "best_reference", "reference_mean",
           "pairs", "seeds", "images", "mean", "low", "high", "p", "p_holm", "verdict"]
HEADLINE_PROTOCOL = "tuned"


@dataclass(frozen=True)
class Setting:
    """One other setting: its folder's name, what this folder's setting is called (its preset), what differs, the
    paired table (or why there is none; ``evaluated_on``: the runs' own data, or another dataset's tag), and per
    (protocol, held-out line, k) the algorithms' order in both on the runs' own data."""

    name: str
    label: str
    changes: list[str]
    table: pd.DataFrame
    orders: list[dict]
    excluded: str | None = None


def other_folders(results: Path) -> list[Path]:
    """Folders directly inside ``results`` that are results folders of their own (a ``runs/`` inside)."""
    return [path for path in sorted(Path(results).iterdir()) if path.is_dir() and is_results_folder(path)]


def setting_of(runs: pd.DataFrame) -> dict:
    """The configuration the runs share (the first run's, less what may differ within a folder but with the preset
    it started from), with their data."""
    summary = json.loads((Path(runs["folder"].iloc[0]) / "summary.json").read_text())
    config = summary.get("config") or {}
    return {key: value for key, value in config.items() if key == "preset" or key not in PER_RUN} | {"data": summary.get("data")}


def changes_between(here: dict, there: dict) -> list[str]:
    """``meta_steps 100 → 1000``, one per setting that differs, in name order."""
    return [f"{key} {here.get(key)!s} → {there.get(key)!s}" for key in sorted(here.keys() | there.keys()) if here.get(key) != there.get(key)]


def _not_compared(name: str, label: str, changes: list[str], why: str) -> Setting:
    return Setting(name, label, changes, pd.DataFrame(columns=COLUMNS), [], why)


def _weighted(frame: pd.DataFrame, column: str) -> float:
    return float((frame[column] * frame["weight"]).sum() / frame["weight"].sum())


def _paired_table(here: pd.DataFrame, there: pd.DataFrame, within: list[str], threshold: float) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Held-out units of both sides (``within``: columns that part them further, e.g. dataset and protocol) paired
    at their final step per (algorithm, held-out line, k, seed, test image): the paired table with both means and
    this side's best reference beside, and the means; None where nothing pairs, or where a pair's crop counts
    differ (the episodes are not the same)."""
    here = here[here["role"] == "held-out"]
    there = there[there["final"] & (there["role"] == "held-out") & ~is_reference(there["algo"])]
    keys = [*within, *PAIR_KEYS]
    pairs = there[[*keys, "iou", "weight"]].merge(here[here["final"]][[*keys, "iou", "weight"]], on=keys, suffixes=("", "_here"))
    if pairs.empty or (pairs["weight"] != pairs["weight_here"]).any():
        return None
    pairs["diff"] = pairs["iou"] - pairs["iou_here"]
    where = [*within, "algo", "k", "holdout"]
    means = pairs.groupby(where).apply(lambda g: pd.Series({"here": _weighted(g, "iou_here"), "there": _weighted(g, "iou")}),
                                       include_groups=False).reset_index()
    cells = cell_summary(here, [*within, *CELL_KEYS])
    table = (compare_pairs(pairs, where, [*within, "algo", "k"], threshold).merge(means, on=where)
             .merge(best_references(cells, [*within, "k", "holdout"]), on=[*within, "k", "holdout"], how="left"))
    return ordered(table.rename(columns={"reference": "best_reference"})), means


def compare(runs: pd.DataFrame, other: pd.DataFrame, name: str, threshold: float = PRACTICAL_DIFFERENCE) -> Setting:
    """``other``'s runs against ``runs``' of the same grid point, under each protocol both recorded, on the runs'
    own data and on every other dataset both were evaluated on."""
    here_setting, there_setting = setting_of(runs), setting_of(other)
    changes = changes_between(here_setting, there_setting)
    label = str(here_setting.get("preset") or "here")
    differ = [key for key in SAME_EPISODES if here_setting.get(key) != there_setting.get(key)]
    if differ:
        return _not_compared(name, label, changes, f"its episodes differ ({', '.join(differ)})")
    matched, there_runs = runs.merge(other[GRID], on=GRID), other.merge(runs[GRID], on=GRID)
    if matched.empty:
        return _not_compared(name, label, changes, "no run shares an algorithm, held-out line, k and seed with this folder")
    tables, orders = [], []
    for protocol in PROTOCOLS:
        here = load_units(matched, load_episodes(matched, protocol), protocol)
        there = load_units(there_runs, load_episodes(there_runs, protocol), protocol)
        found = _paired_table(here, there, [], threshold) if len(here) and len(there) else None
        if found is None:
            if len(here) and len(there) and (there["role"] == "held-out").any():
                return _not_compared(name, label, changes, "its episodes differ (no test image scored alike in both folders)")
            continue
        table, means = found
        tables.append(table.assign(setting=name, evaluated_on=str(here_setting["data"]), protocol=protocol))
        for (line, k), group in means.groupby(["holdout", "k"]):
            rank = lambda column: list(group.sort_values(column, ascending=False, kind="stable")["algo"])  # noqa: E731
            orders.append({"protocol": protocol, "holdout": line, "k": k, "here": rank("here"), "there": rank("there")})
    if not tables:
        return _not_compared(name, label, changes, "no test image scored in both folders")
    here, there = load_evaluation_units(matched), load_evaluation_units(there_runs)
    found = _paired_table(here, there, ["evaluated_on", "protocol"], threshold) if len(here) and len(there) else None
    if found is not None:
        tables.append(found[0].sort_values(["evaluated_on", "protocol"], kind="stable").assign(setting=name))
    return Setting(name, label, changes, pd.concat(tables, ignore_index=True)[COLUMNS], orders)


def compare_all(results: Path, runs: pd.DataFrame, threshold: float = PRACTICAL_DIFFERENCE) -> list[Setting]:
    """Every other setting inside ``results`` (:func:`other_folders`); one that cannot be compared (no completed run
    of today's code, or a folder that mixes settings) is listed with the reason, and the rest of the report stands."""
    found = []
    for folder in other_folders(results):
        try:
            other = completed_runs(folder)
        except DataError as err:
            found.append(_not_compared(folder.name, "here", [], str(err)))
            continue
        if other.empty:
            stale = sum(stale_runs(folder).values())
            found.append(_not_compared(folder.name, "here", [], f"no completed run of today's code ({stale} stale)"))
        else:
            found.append(compare(runs, other, folder.name, threshold))
    return found


def _order(setting: Setting, order: dict) -> str:
    """``a > b > c in both`` or ``a > b > c (default), c > a > b (long)``."""
    if order["here"] == order["there"]:
        return f"{' > '.join(order['here'])} in both"
    return f"{' > '.join(order['here'])} ({setting.label}), {' > '.join(order['there'])} ({setting.name})"


def markdown_of(setting: Setting, threshold: float) -> str:
    """One setting's section: what differs, the paired table, the orders."""
    head = f"### `{setting.name}`\n\nIts settings against this folder's: {'; '.join(setting.changes) or 'none differ'}.\n"
    if setting.excluded:
        return head + f"\nNot compared: {setting.excluded}.\n"
    header = ["data", "protocol", "held-out line", "k", "algorithm", f"here ({setting.label})", f"there ({setting.name})",
              "there minus here [95% CI]", "verdict", "Holm p", "seeds", "images", "best reference here"]
    rows = [[r.evaluated_on, r.protocol, r.holdout, str(r.k), r.algo, f"{r.here:.3f}", f"{r.there:.3f}", interval(r.mean, r.low, r.high, signed=True),
             r.verdict, p_value(r.p_holm), str(r.seeds), str(r.images),
             f"{reference_name(r.best_reference)} {r.reference_mean:.3f}" if isinstance(r.best_reference, str) else "—"]
            for r in setting.table.itertuples()]
    orders = "".join(f"- {o['holdout']}, k = {o['k']}, {o['protocol']} protocol: {_order(setting, o)}\n" for o in setting.orders)
    return (head + "\n" + markdown(header, rows, right_from=5) + "\n\"data\": the runs' own (their held-out line's test "
            "episodes), or a dataset they were evaluated on alike in both settings (`evaluate`, its tag). The algorithms' "
            f"order by mean held-out IoU on the paired images of the runs' own data (references left out):\n\n{orders}\n"
            f"Verdicts as elsewhere in this report: below {threshold:g} IoU \"no difference\", else \"higher\" or \"lower\" "
            "when Holm p < 0.05 (across the held-out lines of each algorithm, k, protocol and data), else \"unclear\". An "
            "order is of means: two algorithms whose differences here and there are within their intervals may swap by "
            "chance.\n")


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
        "are the two means over those pairs, and the best reference is this folder's on the same runs' episodes. "
        f"[Markdown]({tables}/settings.md), [CSV]({tables}/settings.csv).\n\n" + body
    )
    return section, [folder / "settings.md", folder / "settings.csv"]


def finding(settings: list[Setting], to: str) -> list[str]:
    """Per compared setting, under the headline's protocol (or the one recorded, said so): each held-out line and
    k's order in both settings, and each algorithm's paired difference."""
    said = []
    for setting in settings:
        if setting.excluded:
            continue
        protocol = HEADLINE_PROTOCOL if HEADLINE_PROTOCOL in set(setting.table["protocol"]) else str(setting.table["protocol"].iloc[0])
        mine = setting.table[setting.table["protocol"] == protocol]
        orders = "; ".join(f"{o['holdout']}, k = {o['k']}: {_order(setting, o)}" for o in setting.orders if o["protocol"] == protocol)
        differences = "; ".join(
            f"{r.algo} on {r.holdout}, k = {r.k}{'' if r.evaluated_on == mine['evaluated_on'].iloc[0] else f' (on `{r.evaluated_on}`)'}: "
            f"{r.here:.3f} → {r.there:.3f} ({interval(r.mean, r.low, r.high, signed=True)}, {r.verdict})"
            for r in mine.itertuples())
        said.append(
            f"Under `{setting.name}` ({'; '.join(setting.changes)}), on the runs it shares with the main grid (same algorithm, "
            f"held-out line, k and seed, paired per test image), {protocol} protocol"
            f"{'' if protocol == HEADLINE_PROTOCOL else f' (no {HEADLINE_PROTOCOL} records there)'}: the algorithms' order by "
            f"mean held-out IoU is {orders}; {setting.label} → {setting.name}: {differences} ([settings.md]({to}settings.md))."
        )
    return said
