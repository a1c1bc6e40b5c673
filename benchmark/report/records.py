"""Read what the store wrote: the completed runs of a results folder and their per-episode records.

Only runs whose ``summary.json`` says ``"completed"`` count; failed or unfinished runs are left out, so
the report works on a partial sweep. A report pools runs of one setting only: runs whose
configurations differ in anything but the grid (algorithm and its own options, held-out line, k,
seed) or whose data differ, or two runs of the same (algorithm, held-out line, k, seed), are refused
rather than mixed: only then are episodes with the same index the same episodes, and pairs real.
Runs computed by other code than today's (another numerics version, :mod:`benchmark.numerics`) are stale: left
out and counted (:func:`stale_runs`), never reported as today's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmark.config import POOLED
from benchmark.numerics import NUMERICS_VERSION
from benchmark.observations import SEED_PROTOCOL, TUNED_PROTOCOL, collapsed, compact, per_image
from tasks.catalogue import LINES
from tasks.errors import DataError

EPISODE_FILES = ("episodes.csv", "episodes.csv.gz")
EPISODE_COLUMNS = ("run_id", "algo", "holdout", "k", "seed", "line", "role", "episode", "step", "iou")
IMAGE_FILES = ("images.csv", "images.csv.gz")
IMAGE_COLUMNS = ("run_id", "algo", "holdout", "k", "seed", "line", "role", "image_id", "step", "iou", "crops")
UNIT_COLUMNS = ("run_id", "algo", "holdout", "k", "seed", "line", "role", "unit", "step", "iou", "weight", "episodes")
IMAGE, EPISODE = "image", "episode"  # statistical units: a test image, or (records without images.csv) an episode
ROLES = ("held-out", "seen")
BASELINE = "finetune"
PROTOCOLS = (SEED_PROTOCOL, TUNED_PROTOCOL)  # the algorithm's own adaptation; at the rate selected on validation data
PER_RUN = POOLED  # what may differ between the runs of one report: the grid, an algorithm's own options, provenance


def is_results_folder(path: Path) -> bool:
    return (Path(path) / "runs").is_dir()


def read_summary(path: Path) -> dict:
    """A run's or an evaluation's ``summary.json``, refused in one line naming it where it is not a JSON object."""
    try:
        summary = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise DataError(f"{path}: not a run summary (expected a JSON object)")
    return summary


def check_reference(frame: pd.DataFrame, path: Path) -> None:
    """Records mark the references' rows True in ``reference``: anything else there cannot be told apart."""
    if "reference" in frame.columns and frame["reference"].dtype != bool:
        raise DataError(f"{path}: column 'reference' must be True or False on every row")


def _summaries(results: Path):
    """(path, summary) of every completed run in ``results``."""
    for summary_path in sorted(Path(results, "runs").glob("*/summary.json")):
        summary = read_summary(summary_path)
        if summary.get("status") == "completed":
            yield summary_path, summary


def stale_runs(results: Path) -> dict[str, int]:
    """Completed runs computed by other numerics than today's, counted by the version they record."""
    counts: dict[str, int] = {}
    for _, summary in _summaries(results):
        if summary.get("numerics_version") != NUMERICS_VERSION:
            version = str(summary.get("numerics_version", "none (before versioning)"))
            counts[version] = counts.get(version, 0) + 1
    return counts


def completed_runs(results: Path) -> pd.DataFrame:
    """One row per completed run of today's numerics: run_id, algo, holdout, k, seed, preset, data, folder."""
    rows, settings = [], {}
    for summary_path, summary in _summaries(results):
        if summary.get("numerics_version") != NUMERICS_VERSION:
            continue
        config = summary.get("config")
        config = config if isinstance(config, dict) else {}
        missing = [key for key in ("algo", "holdout", "k", "seed") if key not in config]
        if missing:
            raise DataError(f"{summary_path}: config lacks {', '.join(missing)}")
        try:
            k, seed = int(config["k"]), int(config["seed"])
        except (TypeError, ValueError):
            raise DataError(f"{summary_path}: k and seed must be integers, got {config['k']!r} and {config['seed']!r}") from None
        settings[summary_path] = {key: v for key, v in config.items() if key not in PER_RUN} | {"data": summary.get("data")}
        rows.append(
            {
                "run_id": summary.get("run_id", summary_path.parent.name),
                "algo": config["algo"],
                "holdout": config["holdout"],
                "k": k,
                "seed": seed,
                "preset": config.get("preset"),
                "data": summary.get("data"),
                "folder": summary_path.parent,
            }
        )
    runs = pd.DataFrame(rows, columns=["run_id", "algo", "holdout", "k", "seed", "preset", "data", "folder"])
    _check_one_setting(runs, settings, results)
    return runs


def machine_counts(runs: pd.DataFrame) -> dict[str, int]:
    """How many of ``runs`` each machine computed, as its ``config.json`` names it (``provenance.machine``), most
    first; runs whose config does not say are counted as "not recorded". Numbers name the machine they came from:
    CPU kernels differ in their last bits, and a short MAML run can amplify that into another answer."""
    counts: dict[str, int] = {}
    for folder in runs["folder"]:
        path = Path(folder, "config.json")
        try:
            machine = json.loads(path.read_text()).get("machine") if path.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise DataError(f"{path}: not a run configuration (expected a JSON object)") from None
        machine = str(machine) if machine else "not recorded"
        counts[machine] = counts.get(machine, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


COLLAPSE_COLUMNS = ["run_id", "algo", "holdout", "k", "seed", "before", "after", "episodes", "collapsed"]


def collapse_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run whose summary counts collapsed held-out episodes (``observations.collapse``, seed protocol):
    before and after adaptation, of how many, and whether the run collapsed (``observations.collapsed``)."""
    rows = []
    for run in runs.itertuples():
        path = Path(run.folder) / "summary.json"
        summary = json.loads(path.read_text())
        found = summary.get("collapse")
        if found:
            try:
                counts = [int(found[key]) for key in ("before", "after", "episodes")]
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: collapse must count before, after and episodes, got {found!r}") from None
            rows.append([run.run_id, run.algo, run.holdout, run.k, run.seed, *counts, collapsed(summary)])
    return pd.DataFrame(rows, columns=COLLAPSE_COLUMNS)


def _check_one_setting(runs: pd.DataFrame, settings: dict[Path, dict], results: Path) -> None:
    if settings:
        (first_path, first), *others = settings.items()
        for path, setting in others:
            differ = sorted(key for key in first.keys() | setting.keys() if first.get(key) != setting.get(key))
            if differ:
                raise DataError(
                    f"{results}: completed runs with different settings ({', '.join(f'{key}: {first.get(key)!r} vs {setting.get(key)!r}' for key in differ[:3])}"
                    f" in {first_path.parent.name} and {path.parent.name}); report one setting per results folder (run/sweep --out DIR)"
                )
    duplicated = runs[runs.duplicated(["algo", "holdout", "k", "seed"], keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        ids = duplicated[(duplicated[["algo", "holdout", "k", "seed"]] == first[["algo", "holdout", "k", "seed"]]).all(axis=1)]
        raise DataError(
            f"{results}: {len(ids)} completed runs of {first.algo}, held-out {first.holdout}, k={first.k}, "
            f"seed {first.seed} with different settings ({', '.join(ids.run_id)}); keep one per results folder"
        )


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_file()), None)


def _episode_file(folder: Path) -> Path:
    path = _first_file(folder, EPISODE_FILES)
    if path is None:
        raise DataError(f"{folder}: completed run without {' or '.join(EPISODE_FILES)}")
    return path


REFERENCE_SUFFIX = " (reference)"


def _methods(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows the references produced (records with a ``method`` column) stand as rows of their own "algorithm",
    named ``<reference> (reference)``, so every table and plot shows them beside the algorithms."""
    if "method" not in frame.columns:
        return frame
    own = frame["method"] == frame["algo"]
    return frame.assign(algo=frame["algo"].where(own, frame["method"] + REFERENCE_SUFFIX))


def _once(frame: pd.DataFrame, *position: str) -> pd.DataFrame:
    """References are the same for every run of one (held-out line, k, seed): keep each of their rows once.
    ``position``: the columns that place a row within a run (its episode, or its image)."""
    reference = frame["algo"].str.endswith(REFERENCE_SUFFIX)
    keys = ["algo", "holdout", "k", "seed", "line", "role", *position, "step"]
    kept = frame[reference].drop_duplicates(subset=keys, keep="first")
    return pd.concat([frame[~reference], kept], ignore_index=True)


def _final(frame: pd.DataFrame, *within: str) -> pd.Series:
    """Each run's and method's last adaptation step (a classical reference has only step 0); ``within``: columns
    that part a run's records further (the dataset of an evaluation)."""
    return frame["step"] == frame.groupby(["run_id", "algo", *within])["step"].transform("max")


def load_episodes(runs: pd.DataFrame, protocol: str = "seed") -> pd.DataFrame:
    """The tidy per-episode records of ``runs`` under one adaptation protocol (``seed`` or ``tuned``; records
    from before protocols were recorded are the seed protocol's), validated, with ``final`` marking each run's
    last step."""
    frames = []
    for run in runs.itertuples():
        frame = _read_records(_episode_file(run.folder), protocol, EPISODE_COLUMNS)
        if frame is not None:
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*EPISODE_COLUMNS, "final"])
    records = _once(pd.concat(frames, ignore_index=True), "episode")
    records["final"] = _final(records)
    return records


def _read_records(path: Path, protocol: str, columns: tuple[str, ...], frame: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """``columns`` of a record file's rows under ``protocol`` (``frame``: its rows, read already or computed from
    the file), references as their own methods, validated; None for a file written before protocols were recorded
    when another than the seed protocol is asked for. The references' rows, recorded once (under the seed
    protocol, :func:`observations.compact`; files from before repeat them under each), stand under every protocol
    the file records."""
    frame = pd.read_csv(path) if frame is None else frame
    check_reference(frame, path)
    if "protocol" in frame.columns:
        frame = compact(frame)
        own = frame["protocol"] == protocol
        frame = frame[own | frame.get("reference", False)] if own.any() else frame[own]
    elif protocol != SEED_PROTOCOL:
        return None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}")
    return _validated(_methods(frame)[list(columns)], path)


def _validated(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    names = {line.name for line in LINES}
    for column in ("line", "holdout"):
        unknown = sorted(set(frame[column].astype(str)) - names)
        if unknown:
            raise DataError(f"{path}: unknown cell line(s) {', '.join(unknown)} in column {column!r}")
    bad_roles = sorted(set(frame["role"].astype(str)) - set(ROLES))
    if bad_roles:
        raise DataError(f"{path}: unknown role(s) {', '.join(bad_roles)}; expected {' or '.join(ROLES)}")
    iou = pd.to_numeric(frame["iou"], errors="coerce")
    if iou.isna().any() or not iou.between(0, 1).all():
        raise DataError(f"{path}: iou must be numbers in [0, 1]")
    types = {"k": int, "seed": int, "episode": int, "image_id": int, "crops": int, "step": int, "iou": float}
    return frame.astype({column: kind for column, kind in types.items() if column in frame})


def load_units(runs: pd.DataFrame, episodes: pd.DataFrame, protocol: str = "seed") -> pd.DataFrame:
    """The statistical units of ``runs`` under one adaptation protocol: one row per (run, line, test image, step)
    with the image's mean IoU over its crops and their count as ``weight`` (``images.csv.gz``); ``unit`` is
    ``image <id>``, the same label under every seed (seeds and images are crossed). Runs written before
    per-image records fall back to their ``episodes`` rows (``episode <n>``, weight 1), which overstate
    precision; :func:`unit_kind` tells which. ``episodes`` (:func:`load_episodes` of the same protocol) supplies
    each run's episode count per line and the fallback rows.
    """
    frames = []
    for run in runs.itertuples():
        path = _first_file(run.folder, IMAGE_FILES)
        if path is None:
            frame = episodes[episodes["run_id"] == run.run_id]
            frame = frame.assign(unit=EPISODE + " " + frame["episode"].astype(str), weight=1.0)
        else:
            frame = _read_records(path, protocol, IMAGE_COLUMNS)
            if frame is None:
                continue
            if (frame["crops"] < 1).any():
                raise DataError(f"{path}: crops must be positive counts")
            frame = frame.assign(unit=IMAGE + " " + frame["image_id"].astype(str), weight=frame["crops"].astype(float))
        frames.append(frame)
    counts = episodes.groupby(["run_id", "line"])["episode"].nunique().rename("episodes")
    if not frames:
        return pd.DataFrame(columns=[*UNIT_COLUMNS, "final"])
    units = _once(pd.concat(frames, ignore_index=True), "unit").join(counts, on=["run_id", "line"])
    units["final"] = _final(units)
    return units[[*UNIT_COLUMNS, "final"]]


def unit_kind(units: pd.Series) -> str:
    """``image`` when every unit is a test image, else ``episode`` (some records predate per-image rows)."""
    return IMAGE if units.str.startswith(IMAGE + " ").all() else EPISODE


EVALUATIONS = "evaluations"  # <run>/evaluations/<tag>/, written by `evaluate` (its summary.json last)
EVALUATION_IMAGE_COLUMNS = ("algo", "holdout", "k", "seed", "line", "role", "image_id", "step", "iou", "crops")
EVALUATION_UNIT_COLUMNS = ("evaluated_on", "protocol", *UNIT_COLUMNS)


def load_evaluation_units(runs: pd.DataFrame) -> pd.DataFrame:
    """The statistical units of every evaluation of ``runs`` on other data (``python -m benchmark evaluate``):
    as :func:`load_units`, one row per (run, evaluation, protocol, method, line, test image, step) with the
    image's mean IoU over its query crops and their count as ``weight`` (its ``images.csv.gz``), and each line's
    episode count (its ``episodes.csv.gz``); ``evaluated_on`` is the evaluation's tag (its folder). References are
    kept once per (tag, held-out line, k, seed), so they must have scored the same crops in every run they come
    from (:func:`_same_crops`)."""
    frames = []
    for run in runs.itertuples():
        for folder in sorted(path.parent for path in Path(run.folder, EVALUATIONS).glob("*/summary.json")):
            (images, rows), episodes = _evaluation_images(folder), folder / "episodes.csv.gz"
            if not episodes.is_file():
                raise DataError(f"{folder}: evaluation without episodes.csv.gz; run `python -m benchmark evaluate` on it again")
            episode_rows = pd.read_csv(episodes)
            for protocol in PROTOCOLS:
                frame = _read_records(images, protocol, EVALUATION_IMAGE_COLUMNS, rows)
                counted = _read_records(episodes, protocol, EPISODE_COLUMNS[1:], episode_rows)
                if frame is None or frame.empty or counted is None:
                    continue
                if (frame["crops"] < 1).any():
                    raise DataError(f"{folder}: crops must be positive counts")
                counts = counted.groupby("line")["episode"].nunique().rename("episodes")
                units = frame.assign(unit=IMAGE + " " + frame["image_id"].astype(str), weight=frame["crops"].astype(float))
                frames.append(units.join(counts, on="line").assign(run_id=run.run_id, evaluated_on=folder.name, protocol=protocol))
    if not frames:
        return pd.DataFrame(columns=[*EVALUATION_UNIT_COLUMNS, "final"])
    units = pd.concat(frames, ignore_index=True)
    _same_crops(units)
    units = _once(units, "evaluated_on", "protocol", "unit")
    units["final"] = _final(units, "evaluated_on", "protocol")
    return units[[*EVALUATION_UNIT_COLUMNS, "final"]]


def _evaluation_images(folder: Path) -> tuple[Path, pd.DataFrame]:
    """An evaluation's per-image records and the file they come from: its ``images.csv.gz``, or for one written
    before ``evaluate`` kept them, the same rows computed from its per-crop ``observations.csv.gz``
    (:func:`observations.per_image`)."""
    images, crops = folder / "images.csv.gz", folder / "observations.csv.gz"
    if images.is_file():
        return images, pd.read_csv(images)
    if crops.is_file():
        return crops, per_image(pd.read_csv(crops))
    raise DataError(f"{folder}: evaluation without images.csv.gz or observations.csv.gz; run `python -m benchmark evaluate` on it again")


def _same_crops(units: pd.DataFrame) -> None:
    """Refuse evaluations under one tag whose references scored different crops in different runs (other
    ``evaluate`` options): the algorithms would not be paired with the references kept."""
    reference = units[units["algo"].str.endswith(REFERENCE_SUFFIX)]
    keys = ["evaluated_on", "protocol", "algo", "holdout", "k", "seed", "line", "unit", "step"]
    crops = reference.groupby(keys)["weight"].nunique()
    if (crops > 1).any():
        tag, _, _, holdout, k, seed, line, *_ = crops[crops > 1].index[0]
        raise DataError(
            f"evaluations {tag!r}: runs held out {holdout}, k={k}, seed {seed} scored different crops of {line} "
            "(evaluated with other options); evaluate them alike, or give each its own --tag"
        )
