"""The report's table of evaluations on other datasets: what ``python -m benchmark evaluate`` stored under each
completed run's ``evaluations/<tag>/summary.json`` (e.g. synthetic-trained weights scored on real LIVECell), one
row per run, dataset and line, with instance AP where whole images were scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from benchmark.report.tables import MISSING, interval, markdown
from tasks.errors import DataError

COLUMNS = ["run_id", "algo", "holdout", "run_k", "evaluated_on", "k", "crop", "line", "protocol", "role", "split", "images", "episodes",
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
    header = ["algorithm", "held out", "evaluated on", "k", "episodes", "line (split, images)", "role", "protocol", "IoU step 0",
              "IoU final [95% CI]", "AP@0.5 [95% CI]", "AP@[.5:.95] [95% CI]", "AP@0.5, true mask"]
    body = []
    for _, row in rows.iterrows():
        crops = "whole images" if row["crop"] is None or pd.isna(row["crop"]) else f"{int(row['crop'])}-px crops"
        reference = MISSING if row["ap50_truth_mask"] is None or pd.isna(row["ap50_truth_mask"]) else f"{row['ap50_truth_mask']:.3f}"
        body.append([
            row["algo"], row["holdout"], f"{row['evaluated_on']} ({crops})", str(row["k"]), str(row["episodes"]),
            f"{row['line']} ({row['split']}, {row['images']})", row["role"], str(row["protocol"]), f"{row['iou_step0']:.3f}",
            _cell(row, "iou"), _cell(row, "ap50"), _cell(row, "ap"), reference,
        ])
    return markdown(header, body, right_from=8)


def report(runs: pd.DataFrame, out: Path, tables: str) -> tuple[str, list[Path]]:
    """The index section and the files (Markdown and CSV under ``out/tables``); nothing where no run was evaluated."""
    rows = evaluation_rows(runs)
    if rows.empty:
        return "", []
    folder = Path(out) / tables
    folder.mkdir(parents=True, exist_ok=True)
    table = evaluations_table(rows)
    (folder / "evaluations.md").write_text("# Evaluations on other datasets\n\n" + table)
    rows.to_csv(folder / "evaluations.csv", index=False, float_format="%.6g")
    section = (
        "## Evaluations on other datasets\n\n"
        "Completed runs' meta-trained weights scored on other data by `python -m benchmark evaluate` with the run's own "
        "protocol (adaptation under the seed protocol and at the rate the run selected on validation data, episode "
        "rule, seed); each line of the other dataset is a row, its role as in the run. AP is "
        "COCO's segmentation AP of the predicted instances (whole images only); \"true mask\" is the AP the same instance "
        "rule reaches from the annotated mask itself, the most a perfect binary mask would give. Intervals are over "
        f"episodes, which on a small dataset share their few images. [Markdown]({tables}/evaluations.md), "
        f"[CSV]({tables}/evaluations.csv).\n\n" + table
    )
    return section, [folder / "evaluations.md", folder / "evaluations.csv"]
