"""A finished run, found by id or folder: its configuration and its meta-trained weights.

``evaluate`` and ``predict`` start from one. RUN is a run folder (``results/runs/<run-id>``), or a run id or a
unique prefix of one under the results folder. Only a completed run counts: an interrupted run's checkpoint
holds weights from the middle of meta-training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from algorithms import Algorithm, MetaState, load_checkpoint
from benchmark.config import FIELDS, RunConfig
from benchmark.errors import UserError

CHECKPOINT = "checkpoint.pt"


def run_folder(run: str, results: Path) -> Path:
    """The folder of ``run`` (a folder, a run id, or a unique prefix of one under ``results/runs``)."""
    as_path = Path(run)
    if (as_path / "summary.json").is_file() or (as_path / "config.json").is_file():
        return as_path
    runs = Path(results) / "runs"
    matches = sorted(p for p in runs.glob(f"{run}*") if p.is_dir()) if runs.is_dir() and "/" not in run else []
    exact = [p for p in matches if p.name == run]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    if len(matches) > 1:
        raise UserError(f"{run!r} matches {len(matches)} runs in {runs} ({', '.join(p.name for p in matches[:3])}, ...); give more of the id")
    raise UserError(f"{run!r} matches no run: not a run folder, and no run id in {runs} starts with it")


def run_config(folder: Path) -> RunConfig:
    """The configuration a completed run in ``folder`` ran with."""
    path = folder / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: not a finished run (no summary.json); finish it with `run` first") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable run summary ({err})") from None
    if summary.get("status") != "completed":
        raise UserError(f"{folder}: the run did not complete (status {summary.get('status')!r}); its weights are not final")
    values = {k: v for k, v in summary.get("config", {}).items() if k in FIELDS}
    values["algo_options"] = tuple(sorted(dict(values.get("algo_options") or {}).items()))
    return dataclasses.replace(RunConfig(), **values)


def run_weights(folder: Path) -> tuple[Algorithm, MetaState]:
    """The algorithm (with its model) and the meta-trained state the run saved."""
    path = folder / CHECKPOINT
    if not path.is_file():
        how = ""
        try:
            c = run_config(folder)
            data = f" --data-root {c.data_root}" if c.data_root else ""
            how = f" (its settings are in config.json): `python -m benchmark run --preset {c.preset} --algo {c.algo} --holdout {c.holdout} --k {c.k} --seed {c.seed}{data} --force`"
        except UserError:
            pass
        raise UserError(f"{folder}: the run kept no weights ({CHECKPOINT} missing; git does not keep them); rerun it to get them{how}")
    try:
        return load_checkpoint(path)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(str(err)) from None


def run_selection(folder: Path):
    """The adaptation rate the run selected on validation data (``RateSelection``), or None where it selected none."""
    from benchmark.validation import RateSelection

    summary = json.loads((folder / "summary.json").read_text())
    chosen = (summary.get("tuned") or {}).get("adaptation_rate")
    if not chosen:
        return None
    scores = {float(rate): float(score) for rate, score in chosen.get("scores", {}).items()}
    return RateSelection(chosen.get("rate"), scores, int(chosen.get("episodes", 0)), float(chosen.get("seconds", 0.0)))
