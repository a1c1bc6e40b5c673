"""The local executor: ``jobs`` runs at a time, each in a fresh spawned process (on the run's ``threads``)."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator

from benchmark.config import RunConfig
from benchmark.errors import UserError
from benchmark.executors import FINISHED, STARTED, Event, execute_in_worker


class LocalExecutor:
    def __init__(self, out: Path, force: bool, jobs: int, evaluate_on: tuple[str, ...] = ()):
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        self.out, self.force, self.slots, self.evaluate_on = out, force, jobs, evaluate_on
        self.pool: ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return f"{self.slots} at a time on this machine"

    def __enter__(self) -> "LocalExecutor":
        # a fresh process per run: its peak memory is its own
        self.pool = ProcessPoolExecutor(self.slots, mp_context=get_context("spawn"), max_tasks_per_child=1)
        return self

    def __exit__(self, *exc) -> None:
        interrupted = exc[0] is not None
        self.pool.shutdown(wait=not interrupted, cancel_futures=interrupted)

    def events(self, configs: list[RunConfig]) -> Iterator[Event]:
        """Keeps ``jobs`` runs in flight, so a run is reported started when a process takes it."""
        queue = list(reversed(configs))
        pending: dict[Future, RunConfig] = {}
        while queue or pending:
            while queue and len(pending) < self.slots:
                config = queue.pop()
                pending[self.pool.submit(execute_in_worker, config, self.out, self.force, self.evaluate_on)] = config
                yield Event(STARTED, config)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield Event(FINISHED, pending.pop(future), future.result())
