"""Where a sweep's runs are computed: a local process pool (``local``) or a Ray cluster (``ray``).

Every executor sends each run to :func:`execute_in_worker`, which calls the same
:func:`benchmark.execute.execute` that ``run`` calls, so what a run is and how it resumes, fails and is stored
has one definition. An executor only decides where that call happens and reports what it sees as
:class:`Event` objects; results travel through the store (each run writes its own folder), never through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from benchmark.config import RunConfig

EXECUTORS = ("local", "ray")
STARTED, RETRIED, FINISHED = "started", "retried", "finished"


@dataclass(frozen=True)
class Event:
    """One thing that happened to a run: it ``started`` on a worker, its worker died and it was ``retried``, or it
    ``finished`` (``summary`` as execute returns it: completed, or failed with its error)."""

    kind: str
    config: RunConfig
    summary: dict | None = None
    detail: str = ""  # why a run was retried


class Executor(Protocol):
    slots: int  # runs computed at a time, for the sweep's time estimate

    def describe(self) -> str:
        """Where and how many runs at a time, for the sweep's first lines."""

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc) -> None: ...

    def events(self, configs: list[RunConfig]) -> Iterator[Event]:
        """Compute every configuration, yielding events as they happen; ends when every run has finished."""


def execute_in_worker(config: RunConfig, out: str | Path, force: bool, evaluate_on: tuple[str, ...] = ()) -> dict:
    """One run in the process that computes it (on ``config.threads`` torch threads, as ``run`` sets them), then
    its evaluation on each dataset of ``evaluate_on`` that annotates its held-out line (:func:`evaluate_elsewhere`).
    A run that fails for a reason of its own (bad configuration, bad data, a diverging loss) comes back as a failed
    summary, which the store has recorded if the run started, not as an exception: no executor retries it."""
    from benchmark.execute import execute
    from benchmark.store import Store

    try:
        summary = execute(config, Store(out), force=force)
    except Exception as err:
        return failed_summary(config, f"{type(err).__name__}: {err}")
    if summary.get("status") == "completed" and evaluate_on:
        try:
            summary["evaluations"] = evaluate_elsewhere(config, Store(out), evaluate_on, force)
        except Exception as err:  # the run stays completed and stored; only its evaluation failed
            summary["evaluation_error"] = f"{type(err).__name__}: {err}"
    return summary


def evaluations_due(config: RunConfig, store, evaluate_on: tuple[str, ...], force: bool = False) -> list[str]:
    """The datasets of ``evaluate_on`` that annotate the run's held-out line (two or more images) and hold no
    evaluation of the finished run yet (all of them with ``force``)."""
    from benchmark.commands.evaluate import annotated_split, evaluation_folder

    folder = store.run_dir(config.run_id)
    return [
        root for root in evaluate_on
        if annotated_split(Path(root), config.holdout)
        and (force or not (evaluation_folder(folder, Path(root)) / "summary.json").is_file())
    ]


def evaluate_elsewhere(config: RunConfig, store, evaluate_on: tuple[str, ...], force: bool = False) -> list[str]:
    """``python -m benchmark evaluate RUN --data-root ROOT --holdout LINE`` for each dataset due; their tags."""
    from benchmark.commands.evaluate import evaluate_run

    folder = store.run_dir(config.run_id)
    return [evaluate_run(folder, Path(root), holdout=config.holdout)[1]["evaluated_on"] for root in evaluations_due(config, store, evaluate_on, force)]


def failed_summary(config: RunConfig, error: str) -> dict:
    return {"run_id": config.run_id, "status": "failed", "error": error, "skipped": False}
