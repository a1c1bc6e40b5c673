"""The Ray executor: each run is one Ray task calling :func:`benchmark.executors.execute_in_worker`.

The store must be a folder every node reaches (a shared filesystem): workers write each run's folder, the driver
reads the summaries. A worker or node that dies is a system failure: the driver resubmits the run, up to
``retries`` times, and the new attempt resumes from the run's last checkpoint in the store. A run that fails for a
reason of its own comes back as a failed summary (see ``execute_in_worker``) and is not retried. Ray's own task
retries are off (``max_retries=0``) so that the driver knows each attempt's number: only the first attempt of a
``--force`` rerun starts afresh, later ones resume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

from benchmark.config import RunConfig
from benchmark.errors import UserError
from benchmark.executors import FINISHED, RETRIED, STARTED, Event, execute_in_worker, failed_summary

EXTRA = "pip install -e '.[ray]'"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
SHARED_ENV = ("FEWSHOT_CELLSEG_CACHE",)  # the driver's data cache, if it names one, is the workers' too
POLL_S = 0.5


def import_ray(loopback: bool):
    """Ray, or a one-line error naming the extra. ``loopback``: a cluster on this machine only, whose nodes Ray
    must address as 127.0.0.1 (by default it advertises, and listens on, the machine's network address)."""
    if loopback:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when ray is first imported
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


def _is_loopback(address: str | None) -> bool:
    if address is None:
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in LOOPBACK


class _Starts:
    """A Ray actor the tasks tell when they start, so the driver can show which runs compute now."""

    def __init__(self):
        self.seen: list[str] = []

    def add(self, run_id: str) -> None:
        self.seen.append(run_id)

    def after(self, count: int) -> list[str]:
        return self.seen[count:]


def _run_task(config: RunConfig, out: str, force: bool, evaluate_on: tuple[str, ...], starts) -> dict:
    starts.add.remote(config.run_id)
    return execute_in_worker(config, out, force, evaluate_on)


def _probe(out: str) -> str | None:
    """Write a file into ``out/runs`` on the node this runs on: its name, or why it cannot be written."""
    import ray

    folder = Path(out) / "runs"
    name = f".write-test-{ray.get_runtime_context().get_node_id()[:12]}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    except OSError as err:
        return f"error: {err.strerror or err}"
    return name


class RayExecutor:
    def __init__(
        self, out: Path, force: bool, address: str | None, cpus_per_run: int, gpus_per_run: float, retries: int,
        evaluate_on: tuple[str, ...] = (),
    ):
        """``cpus_per_run``: the runs' ``threads`` setting; Ray reserves one CPU per torch thread. ``evaluate_on``:
        datasets each finished run is evaluated on, at paths every node reads."""
        for flag, value, ok in [("--cpus-per-run", cpus_per_run, cpus_per_run > 0),
                                ("--gpus-per-run", gpus_per_run, gpus_per_run >= 0), ("--retries", retries, retries >= 0)]:
            if not ok:
                raise UserError(f"invalid value for {flag}: {value:g}")
        self.out, self.force, self.address = Path(out).resolve(), force, address
        self.cpus, self.gpus, self.retries = cpus_per_run, gpus_per_run, retries
        self.evaluate_on = tuple(str(Path(root).resolve()) for root in evaluate_on)
        self.ray = import_ray(_is_loopback(address))
        self.slots = 1

    def describe(self) -> str:
        where = "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address}"
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.slots} at a time on {where} ({self.cpus} CPU{gpus} per run, one torch thread per CPU)"

    def __enter__(self) -> "RayExecutor":
        ray = self.ray
        env = {name: os.environ[name] for name in SHARED_ENV if name in os.environ}
        options = dict(
            logging_level="error", log_to_driver=False,  # the driver shows the sweep; workers' logs stay in Ray's
            runtime_env={"env_vars": env} if env else None,
        )
        try:
            if self.address is None:  # address="local": a new instance, even where another is running
                ray.init(address="local", include_dashboard=False, **options)
            else:
                ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"cannot connect to the Ray cluster at {self.address}: {str(err).splitlines()[0]}") from None
        try:
            self._check_store()
            self.slots = self._slots()
        except BaseException:
            ray.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()  # a local instance stops; a cluster's tasks of this sweep are ended with the driver

    def _slots(self) -> int:
        total = self.ray.cluster_resources()
        slots = int(total.get("CPU", 0) // self.cpus)
        if self.gpus:
            slots = min(slots, int(total.get("GPU", 0) // self.gpus))
        if slots < 1:
            have = f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs"
            raise UserError(f"the Ray cluster has {have}: too few for one run with --cpus-per-run {self.cpus:g} --gpus-per-run {self.gpus:g}")
        return slots

    def _check_store(self) -> None:
        """Every node can write the results folder, and what it writes is what the driver reads (one filesystem)."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        try:
            answers = ray.get([
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(self.out))
                for node in nodes
            ])
        except ray.exceptions.RayTaskError as err:
            raise UserError(f"Ray workers cannot run this package ({type(err.cause).__name__}: {err.cause}); "
                            "install the same fewshot-cellseg on every node") from None
        for node, answer in zip(nodes, answers):
            where = f"on the Ray node {node['NodeManagerAddress']}"
            if answer.startswith("error: "):
                raise UserError(f"results folder {self.out} is not writable {where} ({answer[7:]}); it must be a folder every node can write")
            written = self.out / "runs" / answer
            if not written.is_file():
                raise UserError(f"results folder {self.out}: what the node {where} wrote there is not visible here; use a shared filesystem")
            written.unlink()

    def events(self, configs: list[RunConfig]) -> Iterator[Event]:
        ray = self.ray
        # a fresh worker process per run (max_calls=1), as locally: its peak memory is its own
        task = ray.remote(max_retries=0, max_calls=1)(_run_task)
        starts = ray.remote(num_cpus=0)(_Starts).remote()
        by_id = {config.run_id: config for config in configs}

        def submit(config: RunConfig, attempt: int):
            options = task.options(name=config.run_id, num_cpus=self.cpus, num_gpus=self.gpus)
            return options.remote(config, str(self.out), self.force and attempt == 1, self.evaluate_on, starts)

        pending = {submit(config, 1): (config, 1) for config in configs}
        first_start: dict[str, float] = {}
        seen = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for run_id in ray.get(starts.after.remote(seen)):
                    seen += 1
                    first_start.setdefault(run_id, time.perf_counter())
                    yield Event(STARTED, by_id[run_id])
                for ref in ready:
                    config, attempt = pending.pop(ref)
                    wall_s = time.perf_counter() - first_start.get(config.run_id, time.perf_counter())
                    try:
                        event = Event(FINISHED, config, ray.get(ref))
                    except ray.exceptions.RayTaskError as err:  # the task raised outside a run (an import)
                        event = self._lost(config, f"{type(err.cause).__name__}: {err.cause}", wall_s)
                    except ray.exceptions.RayError as err:  # the worker or node died: retry from the checkpoint
                        why = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                        if attempt > self.retries:
                            event = self._lost(config, f"gave up after {attempt} attempts; last: {why}", wall_s)
                        else:
                            pending[submit(config, attempt + 1)] = (config, attempt + 1)
                            event = Event(RETRIED, config, detail=f"attempt {attempt + 1} of {self.retries + 1} after {why}")
                    yield event
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def _lost(self, config: RunConfig, error: str, wall_s: float) -> Event:
        """A run whose tasks never returned a summary: recorded failed in the store (``wall_s`` since its first
        attempt started), its checkpoints kept for the next sweep to resume."""
        from benchmark.store import Store

        Store(self.out).fail(config, error, wall_s)
        return Event(FINISHED, config, failed_summary(config, error))
