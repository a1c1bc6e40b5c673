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


def execute_in_worker(config: RunConfig, out: str | Path, force: bool) -> dict:
    """One run in the process that computes it (on ``config.threads`` torch threads, as ``run`` sets them). A run
    that fails for a reason of its own (bad configuration, bad data, a diverging loss) comes back as a failed
    summary, which the store has recorded if the run started, not as an exception: no executor retries it."""
    from benchmark.execute import execute
    from benchmark.store import Store

    try:
        return execute(config, Store(out), force=force)
    except Exception as err:
        return failed_summary(config, f"{type(err).__name__}: {err}")


def failed_summary(config: RunConfig, error: str) -> dict:
    return {"run_id": config.run_id, "status": "failed", "error": error, "skipped": False}
