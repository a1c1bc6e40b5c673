"""The report's tables of evaluations on other datasets: what ``python -m benchmark evaluate`` stored under each
completed run's ``evaluations/<tag>/`` (e.g. synthetic-trained weights scored on real LIVECell).

The headline table has a block per (dataset, held-out line of the runs, line, k, protocol): each algorithm as the
mean over its seeds and the references that ``evaluate`` scored on the same crops, from the per-crop records with
test images and seeds as the units (:func:`records.load_evaluation_units`), and each algorithm's paired difference
to the best reference (:func:`summaries.best_reference_differences`). The per-run detail table is what
``evaluate`` summarised in each ``summary.json``: one row per run, dataset and line, with instance AP where whole
images were scored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from benchmark.report.records import PROTOCOLS, REFERENCE_SUFFIX, load_evaluation_units
from benchmark.report.summaries import LINE_ORDER, algo_order, best_reference_differences, best_references, cell_summary
from benchmark.report.tables import MISSING, interval, markdown, span
from benchmark.stats import PRACTICAL_DIFFERENCE
from tasks.errors import DataError

COLUMNS = ["run_id", "algo", "holdout", "seed", "run_k", "evaluated_on", "k", "crop", "line", "protocol", "role", "split", "images", "episodes",
           "iou_step0", "iou", "iou_low", "iou_high", "ap50", "ap50_low", "ap50_high", "ap", "ap_low", "ap_high", "ap50_truth_mask"]


def evaluation_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (completed run, evaluation, line), in run then tag order."""
    rows = []
    for run in runs.itertuples():
        for path in sorted(Path(run.folder, "evaluations").glob("*/summary.json")):
            try:
                summary = json.loads(path.read_text())
                for line in summary["lines"]:
                    row = {key: summary.get(key) for key in ("run_id", "algo", "holdout", "run_k", "evaluated_on", "k", "crop")}
                    row["seed"] = run.seed
                    row |= {key: line.get(key) for key in ("line", "protocol", "role", "split", "images", "episodes", "iou_step0", "iou", "ap50", "ap", "ap50_truth_mask")}
                    for name in ("iou", "ap50", "ap"):
                        row[f"{name}_low"], row[f"{name}_high"] = line.get(f"{name}_ci") or (None, None)
                    rows.append(row)
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{path}: not an evaluation summary ({type(err).__name__}: {err})") from None
    return pd.DataFrame(rows, columns=COLUMNS)


def _cell(row, name: str) -> str:
    mean = row[name]
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    low, high = (float("nan") if v is None else v for v in (row[f"{name}_low"], row[f"{name}_high"]))
    return interval(mean, low, high)


def evaluations_table(rows: pd.DataFrame) -> str:
    header = ["algorithm", "held out", "seed", "evaluated on", "k", "episodes", "line (split, images)", "role", "protocol", "IoU step 0",
              "IoU final [95% CI]", "AP@0.5 [95% CI]", "AP@[.5:.95] [95% CI]", "AP@0.5, true mask"]
    body = []
    for _, row in rows.iterrows():
        whole = row["crop"] is None or pd.isna(row["crop"])
        crops = "whole images" if whole else f"{int(row['crop'])}-px crops"
        reference = MISSING if row["ap50_truth_mask"] is None or pd.isna(row["ap50_truth_mask"]) else f"{row['ap50_truth_mask']:.3f}"
        ap = [_cell(row, "ap50"), _cell(row, "ap"), reference] if whole else [NOT_SCORED] * 3  # instances need whole images
        body.append([
            row["algo"], row["holdout"], str(row["seed"]), f"{row['evaluated_on']} ({crops})", str(row["k"]), str(row["episodes"]),
            f"{row['line']} ({row['split']}, {row['images']})", row["role"], str(row["protocol"]), f"{row['iou_step0']:.3f}",
            _cell(row, "iou"), *ap,
        ])
    return markdown(header, body, right_from=9)


NOT_SCORED = "n/a"  # AP on crops: a crop cuts instances, so AP is scored on whole images only, not "not run yet"


WHERE = ["evaluated_on", "holdout", "line", "k", "protocol"]  # a block of the headline table
FAMILY = ["algo", "evaluated_on", "k", "protocol"]  # Holm across the (held-out line, line) blocks of each
HEADLINE_COLUMNS = [*WHERE, "role", "algo", "seeds", "images", "episodes", "step0", "mean", "low", "high", "best_reference",
                    "diff", "diff_low", "diff_high", "p", "p_holm", "verdict"]


def by_method(units: pd.DataFrame, threshold: float = PRACTICAL_DIFFERENCE) -> pd.DataFrame:
    """The headline table, tidy: per block (``WHERE``) each method's final-step IoU over its seeds and test
    images with 95% CI, the block's best reference, and each algorithm minus it (paired per seed and image)."""
    if units.empty:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    cells = cell_summary(units, ["algo", *WHERE, "role"])
    cells[["low", "high"]] = cells[["low", "high"]].clip(0, 1)  # as `evaluate`'s: few images make t-intervals wide
    best = best_references(cells, WHERE).rename(columns={"reference": "best_reference"})
    differences = best_reference_differences(units, cells, WHERE, FAMILY, threshold)
    differences = differences.rename(columns={"mean": "diff", "low": "diff_low", "high": "diff_high"})
    frame = cells.merge(best[[*WHERE, "best_reference"]], on=WHERE, how="left")
    frame = frame.merge(differences[["algo", *WHERE, "diff", "diff_low", "diff_high", "p", "p_holm", "verdict"]], on=["algo", *WHERE], how="left")
    order = {"line": LINE_ORDER, "holdout": LINE_ORDER, "protocol": list(PROTOCOLS), "algo": algo_order(frame["algo"].unique())}
    rank = {column: frame[column].map({name: i for i, name in enumerate(names)}) for column, names in order.items()}
    frame = frame.assign(**{f"_{c}": r for c, r in rank.items()}).sort_values(["evaluated_on", "_line", "_holdout", "k", "_protocol", "_algo"])
    return frame[HEADLINE_COLUMNS].reset_index(drop=True)


def _difference(row) -> str:
    """An algorithm's difference to the best reference; the best reference named, the other references blank."""
    if row["algo"] == row["best_reference"]:
        return "(best reference)"
    if row["algo"].endswith(REFERENCE_SUFFIX):
        return ""
    return MISSING if pd.isna(row["diff"]) else interval(row["diff"], row["diff_low"], row["diff_high"], signed=True)


def headline_table(frame: pd.DataFrame, rows: pd.DataFrame) -> str:
    """Markdown: a section per dataset, one row per method of each block; ``rows`` (:func:`evaluation_rows`) say
    what each dataset holds."""
    header = ["line (role)", "held out in training", "k", "protocol", "method", "seeds", "images", "episodes", "IoU step 0",
              "IoU final [95% CI]", "minus best reference [95% CI]", "verdict"]
    sections = []
    for tag, mine in frame.fillna({"verdict": ""}).groupby("evaluated_on", sort=False):
        body = [
            [f"{r['line']} ({r['role']})", r["holdout"], str(r["k"]), r["protocol"], r["algo"], str(r["seeds"]), str(r["images"]),
             str(r["episodes"]), f"{r['step0']:.3f}", interval(r["mean"], r["low"], r["high"]), _difference(r), r["verdict"]]
            for _, r in mine.iterrows()
        ]
        sections.append(f"### On `{tag}`\n\n{_holds(rows[rows['evaluated_on'] == tag])}\n\n" + markdown(header, body, right_from=5))
    return "\n".join(sections)


def _holds(rows: pd.DataFrame) -> str:
    """What one dataset gave the evaluations: crops or whole images, and each line's annotated images."""
    crop = rows["crop"].dropna()
    shape = "whole images" if crop.empty else f"{span(crop)}-px crops"
    lines = rows.drop_duplicates("line").set_index("line")
    held = "; ".join(f"{line}: {int(lines.loc[line, 'images'])} annotated image(s) in its {lines.loc[line, 'split']} split"
                     for line in LINE_ORDER if line in lines.index)
    return f"{shape.capitalize()}; {held}."


def report(runs: pd.DataFrame, out: Path, tables: str, threshold: float = PRACTICAL_DIFFERENCE) -> tuple[str, list[Path], pd.DataFrame]:
    """The index section, the files (Markdown and CSV under ``out/tables``) and the tidy headline table
    (:func:`by_method`, for the report's findings); nothing where no run was evaluated."""
    rows = evaluation_rows(runs)
    if rows.empty:
        return "", [], by_method(pd.DataFrame())
    folder = Path(out) / tables
    folder.mkdir(parents=True, exist_ok=True)
    methods = by_method(load_evaluation_units(runs), threshold)
    headline = headline_table(methods, rows)
    (folder / "evaluated_elsewhere.md").write_text("# Evaluations on other datasets, with the references\n\n" + headline)
    methods.to_csv(folder / "evaluated_elsewhere.csv", index=False, float_format="%.6g")
    table = evaluations_table(rows)
    (folder / "evaluations.md").write_text("# Evaluations on other datasets, per run\n\n" + table)
    rows.to_csv(folder / "evaluations.csv", index=False, float_format="%.6g")
    section = (
        "## Evaluations on other datasets\n\n"
        "Completed runs' meta-trained weights scored on other data (e.g. real LIVECell) by `python -m benchmark evaluate` "
        "with the run's own protocol (adaptation under the seed protocol and at the rate the run selected on validation "
        "data, episode rule, seed), and the references scored by the same command on the same support and query crops. "
        "Each algorithm row is the mean over its seeds (`seeds`: the runs behind it). \"Minus best reference\" is its "
        "difference to the reference with the highest mean in its block, chosen on these very episodes (a floor to "
        "clear, not a method), paired per test image and seed, with the t-test, Holm across the lines of each algorithm, "
        f"dataset, k and protocol, and the report's verdicts (below {threshold:g} IoU: \"no difference\").\n\n"
        "Intervals have the test images and seeds as units, as everywhere in this report; `images` is how many "
        "distinct query images stand behind a cell, `episodes` the episodes pooled over seeds. On a small set the "
        "images are few: the shared real sample annotates 2 images of MCF7 and of BT-474, so there an interval rests "
        "on 2 images (with one seed, a t with one degree of freedom) and is wide by construction (IoU intervals are "
        "bounded to [0, 1], as `evaluate`'s): it says how little two images tell about a line, not how precisely these "
        "crops were scored. An interval over the episodes "
        "would describe crops of the same two images, not images, and is not given.\n\n" + headline + "\n"
        f"Data: [Markdown]({tables}/evaluated_elsewhere.md), [CSV]({tables}/evaluated_elsewhere.csv).\n\n"
        "### Per run\n\n"
        "What `evaluate` summarised for each run: one row per run, dataset and line, its role as in the run. AP is "
        "COCO's segmentation AP of the predicted instances (whole images only: \"n/a\" on crops); \"true mask\" is the AP the same instance "
        "rule reaches from the annotated mask itself, the most a perfect binary mask would give. IoU intervals are "
        "`evaluate`'s, over the query images of one run (one seed), bounded to [0, 1]; AP intervals are over episodes, "
        f"which on a small dataset share their few images. [Markdown]({tables}/evaluations.md), "
        f"[CSV]({tables}/evaluations.csv).\n\n" + table
    )
    written = [folder / "evaluated_elsewhere.md", folder / "evaluated_elsewhere.csv", folder / "evaluations.md", folder / "evaluations.csv"]
    return section, written, methods
