"""The results store: the only place that writes files, each one atomically.

Layout of ``<results>/runs/<run-id>/``:

- ``config.json``        the resolved configuration with provenance (package versions, git commit, device)
- ``train_log.csv``      one row per meta-step: loss and forward-backward passes
- ``episodes.csv.gz``    compact records, one row per line x episode x adaptation step (committed; report reads it)
- ``images.csv.gz``      compact records per test image: one row per line x query image x adaptation step, its IoU
                         averaged over its crops, and their count (committed; the report's statistical unit)
- ``observations.csv.gz`` one row per query crop (bulky; not committed)
- ``manifests.json.gz``  the evaluation episodes (image ids and crop boxes) that reproduce every record
- ``examples.npz``       images, truth and predictions of one held-out episode, for the report's example grid
- ``checkpoint.pt``      the meta-state, saved periodically during meta-training (resume) and at the end
- ``attempts.json``      when each process that worked on the run started (a resumed run has several)
- ``summary.json``       written last: its presence with status "completed" is what marks a run finished; also
                         the budget spent: ``passes``, ``wall_s``, ``train_flops`` and ``flops_per_step`` (the FLOPs
                         of each meta-step, as ``[first, end, FLOPs each]`` pieces)

The compact records hold float32's digits and the references' rows once (:func:`write_records`).

Every run id includes the numerics version (:mod:`benchmark.numerics`); a stored run whose configuration
records another version was computed by other code and is stale (:func:`is_current`).
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from algorithms import Algorithm, MetaState, load_checkpoint, save_checkpoint
from benchmark.config import RunConfig
from benchmark.machine import processor
from benchmark.numerics import NUMERICS_VERSION
from benchmark.observations import RECORD_FORMAT, compact, per_image
from benchmark.report.records import check_reference, read_summary
from benchmark.stats import Interval, mean_ci
from benchmark.runner import RunResult
from tasks.cache import atomic_write, remove_temporaries
from tasks.errors import DataError

COMPLETED, FAILED = "completed", "failed"
TRAIN_LOG_COLUMNS = ["step", "loss", "passes", "wall_s", "val_iou_0", "val_iou_n"]  # the last two: budget points
PACKAGES = ("torch", "segmentation-models-pytorch", "numpy", "scipy", "pandas", "pycocotools", "fewshot-cellseg")


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, default=str) + "\n").encode()))


def write_csv(path: Path, table: pd.DataFrame, float_format: str | None = None) -> None:
    """CSV, gzip-compressed (reproducibly: no timestamp in the header) when the name ends in .gz."""
    compression = {"method": "gzip", "mtime": 0} if path.suffix == ".gz" else None
    atomic_write(path, lambda f: table.to_csv(f, index=False, compression=compression, float_format=float_format))


def write_records(path: Path, records: pd.DataFrame) -> None:
    """A compact record table (``episodes.csv.gz``, ``images.csv.gz``), committed: references once
    (:func:`observations.compact`), values to float32's precision."""
    write_csv(path, compact(records), RECORD_FORMAT)


RECORD_FILES = ("episodes.csv", "episodes.csv.gz", "images.csv", "images.csv.gz")


def compact_records(results: Path) -> tuple[int, int, int]:
    """Rewrite the compact records of ``results``' finished runs and evaluations as today's store writes them
    (records from before repeat the references under each protocol, keep 17 digits and, per image, the
    foreground fraction); the report reads either alike. Returns (files changed, bytes before, bytes after)."""
    changed = before = after = 0
    runs = Path(results, "runs")
    for summary_path in sorted(runs.glob("*/summary.json")) + sorted(runs.glob("*/evaluations/*/summary.json")):
        if read_summary(summary_path).get("status", COMPLETED) != COMPLETED:  # an evaluation's summary has no status: written last
            continue
        for path in (summary_path.parent / name for name in RECORD_FILES):
            if path.is_file():
                old = path.read_bytes()
                write_records(path, _records(path))
                new = path.read_bytes()
                changed, before, after = changed + (new != old), before + len(old), after + len(new)
    return changed, before, after


def _records(path: Path) -> pd.DataFrame:
    """A stored record table, checked as far as compacting needs: what the report reads stays readable."""
    try:
        records = pd.read_csv(path)
    except (ValueError, OSError, EOFError) as err:  # not CSV, not gzip, truncated, empty
        raise DataError(f"{path}: not a readable record table ({err})") from None
    missing = [column for column in ("line", "step", "iou") if column not in records.columns]
    if missing:
        raise DataError(f"{path}: not a record table (no {', '.join(missing)} column)")
    check_reference(records, path)
    if path.name.startswith("images"):
        records = records.drop(columns="predicted_foreground", errors="ignore")
    return records


def is_current(summary: dict) -> bool:
    """Whether a stored run was computed by today's numerics (runs from before versioning record none)."""
    return summary.get("numerics_version") == NUMERICS_VERSION


def provenance(device: str) -> dict[str, Any]:
    """What produced a run: package versions, the git commit, the machine and device."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {
        "packages": versions,
        "git_commit": commit,
        "python": platform.python_version(),
        "machine": f"{processor(torch.device('cpu'))}, {platform.machine()}, {os.cpu_count()} CPUs",
        "device": device,  # the torch threads a run used are its setting `threads`
    }


class Store:
    def __init__(self, root: Path | str = "results"):
        self.root = Path(root)
        self.runs = self.root / "runs"

    def check_writable(self) -> None:
        """Make ``runs/`` and write a file there, so a folder that cannot take results fails before any compute
        (with the OSError that names it), not after a run's worth of it."""
        self.runs.mkdir(parents=True, exist_ok=True)
        probe = self.runs / f".writable-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def summary(self, run_id: str) -> dict | None:
        path = self.run_dir(run_id) / "summary.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_complete(self, run_id: str) -> bool:
        summary = self.summary(run_id)
        return bool(summary) and summary.get("status") == COMPLETED

    def summaries(self) -> list[dict]:
        found = (self.summary(path.name) for path in sorted(self.runs.glob("*/")))
        return [s for s in found if s]

    # during a run -------------------------------------------------------------------------------------
    def start(self, config: RunConfig, fresh: bool = False) -> Path:
        """Make the run folder, record the configuration and this attempt, and delete what an interrupted write
        left behind. Drops a stale summary; ``fresh`` (a forced rerun) drops the old checkpoint, training log and
        attempts too, so nothing can resume from the previous run."""
        folder = self.run_dir(config.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        remove_temporaries(folder)
        stale = ("summary.json", "checkpoint.pt", "train_log.csv", "attempts.json") if fresh else ("summary.json",)
        for name in stale:
            (folder / name).unlink(missing_ok=True)
        write_json(
            folder / "config.json",
            {
                **config.to_dict(),
                "run_id": config.run_id,
                "data": config.data_identity,
                "numerics_version": NUMERICS_VERSION,
                **provenance(config.device),
            },
        )
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(folder / "attempts.json", self.attempts(config.run_id) + [{"started": started}])
        return folder

    def attempts(self, run_id: str) -> list[dict]:
        try:
            return json.loads((self.run_dir(run_id) / "attempts.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []

    @staticmethod
    def _identity(config: RunConfig) -> dict[str, Any]:
        return {
            "run_id": config.run_id,
            "config": config.to_dict(),
            "data": config.data_identity,
            "numerics_version": NUMERICS_VERSION,
        }

    def checkpoint(self, config: RunConfig, algorithm: Algorithm, state: MetaState, log: list[dict]) -> None:
        folder = self.run_dir(config.run_id)
        write_train_log(folder / "train_log.csv", log)
        save_checkpoint(folder / "checkpoint.pt", algorithm, state)

    def resume_point(self, config: RunConfig) -> tuple[MetaState, list[dict]] | None:
        """The last checkpoint of an unfinished run, with its training log; None to start afresh."""
        folder = self.run_dir(config.run_id)
        if not (folder / "checkpoint.pt").is_file() or not (folder / "train_log.csv").is_file():
            return None
        _, state = load_checkpoint(folder / "checkpoint.pt")
        log = pd.read_csv(folder / "train_log.csv").to_dict("records")
        return state, [entry for entry in log if entry["step"] <= state.step]

    # after a run --------------------------------------------------------------------------------------
    def finish(self, result: RunResult, headline: dict[str, Any]) -> Path:
        """Write every artefact of a finished run, the summary last."""
        config = result.config
        folder = self.run_dir(config.run_id)
        self.checkpoint(config, result.algorithm, result.state, result.train_log)
        write_csv(folder / "observations.csv.gz", result.observations)
        write_records(folder / "episodes.csv.gz", result.episodes)
        write_records(folder / "images.csv.gz", per_image(result.observations))
        atomic_write(folder / "manifests.json.gz", lambda f: f.write(gzip.compress(json.dumps(result.manifests).encode(), mtime=0)))
        atomic_write(folder / "examples.npz", lambda f: np.savez_compressed(f, **result.examples))
        remove_temporaries(folder)
        write_json(
            folder / "summary.json",
            {
                **self._identity(config),
                "status": COMPLETED,
                "wall_s": round(result.wall_s, 2),
                "attempts": len(self.attempts(config.run_id)),
                "peak_mem_mb": round(result.peak_mem_mb, 1),
                "passes": result.passes,
                "train_flops": result.train_flops,
                "flops_per_step": [list(piece) for piece in result.flops],  # [first, end, FLOPs each]
                "error": None,
                **headline,
            },
        )
        return folder

    def fail(self, config: RunConfig, error: str, wall_s: float) -> None:
        """Mark a run failed; everything it wrote before (checkpoints) stays."""
        folder = self.run_dir(config.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            folder / "summary.json",
            {
                **self._identity(config),
                "status": FAILED,
                "wall_s": round(wall_s, 2),
                "attempts": len(self.attempts(config.run_id)),
                "error": error,
            },
        )


def write_train_log(path: Path, log: list[dict]) -> None:
    write_csv(path, pd.DataFrame(log, columns=TRAIN_LOG_COLUMNS))


def image_scores(images: pd.DataFrame) -> tuple[Interval, float]:
    """From :func:`per_image` rows of one method: its IoU after the last step, with a 95% interval whose units are
    the images (weighted by their crops), and its IoU before adapting (step 0): what a run's summary and an
    evaluation's summary state for each line."""
    final = images[images.step == images.step.max()]
    step0 = images[images.step == 0]
    return mean_ci(final.iou, units=final.image_id, weights=final.crops), float(np.average(step0.iou, weights=step0.crops))
