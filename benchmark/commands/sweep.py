"""``python -m benchmark sweep``: the leave-one-line-out grid, resumable, on a local process pool or a Ray cluster.

Every run of the grid goes through the same ``execute`` as ``run`` (see :mod:`benchmark.executors`); finished
runs are skipped, so an interrupted sweep continues where it stopped. Runs with the same seed and k evaluate on
identical episodes, so every comparison between algorithms is paired.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from contextlib import closing
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmark.errors import UserError
from benchmark.commands.options import add_config_options, config_from_args
from benchmark.commands.run import prepare_default_data, progress_view
from benchmark.config import RunConfig, resolve
from benchmark.executors import EXECUTORS, FINISHED, RETRIED, STARTED, Event, Executor, evaluations_due
from tasks.catalogue import LINES, cell_line
from tasks.livecell import open_livecell


def _csv(kind):
    def parse(text: str) -> list:
        return [kind(item) for item in text.split(",") if item.strip()]

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sweep",
        help="run the leave-one-line-out grid: algorithms x held-out lines x k x seeds",
        description="Run every combination of the grid (resumable: finished runs are skipped). Lists are "
        "comma-separated.",
    )
    parser.add_argument("--algos", type=_csv(str), help="algorithms (default: all registered)")
    parser.add_argument("--holdouts", type=_csv(str), help="held-out lines (default: all 8)")
    parser.add_argument("--k", dest="ks", type=_csv(int), default=[1, 3], help="shots (default: 1,3)")
    parser.add_argument("--seeds", type=_csv(int), default=[0], help="seeds (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results); with "
                        "--executor ray a folder every node can write (a shared filesystem)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs too")
    parser.add_argument("--evaluate-on", action="append", type=Path, default=[], metavar="ROOT",
                        help="after each run, `evaluate` it on this dataset (LIVECell layout, e.g. real images) where it "
                        "annotates the run's held-out line with two or more images; finished runs not yet evaluated "
                        "there are evaluated too; repeatable")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="where runs compute: local processes (default) or a Ray cluster (needs pip install -e '.[ray]')")
    parser.add_argument("--jobs", type=int, help="local: runs in parallel, each in its own process (default: 1)")
    ray = parser.add_argument_group("--executor ray")
    ray.add_argument("--address", help="the cluster to join: auto (the one started on this machine by `ray start`) or "
                     "HOST:PORT; default: start a local Ray instance for this sweep")
    ray.add_argument("--cpus-per-run", type=int,
                     help="CPUs Ray reserves per run, and the run's torch threads: sets --threads (default: --threads)")
    ray.add_argument("--gpus-per-run", type=float,
                     help="GPUs Ray reserves per run, fractions allowed (default: 0); --device auto becomes cuda when > 0")
    ray.add_argument("--retries", type=int, help="times a run whose worker or node died is resubmitted; "
                     "it resumes from its last checkpoint; runs failing on their own are never retried (default: 2)")
    add_config_options(parser, skip=("algo", "holdout", "k", "seed", "algo_options"))
    parser.set_defaults(func=main)


RAY_FLAGS = {"address": None, "cpus_per_run": None, "gpus_per_run": 0.0, "retries": 2}


def make_executor(args: argparse.Namespace, configs: list[RunConfig], evaluate_on: tuple[str, ...] = ()) -> Executor:
    """The executor the flags ask for; a flag of the other executor is an error, not silently ignored."""
    given = [name for name in RAY_FLAGS if getattr(args, name) is not None]
    if args.executor == "local":
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is an option of --executor ray")
        from benchmark.executors.local import LocalExecutor

        return LocalExecutor(args.out, args.force, 1 if args.jobs is None else args.jobs, evaluate_on)
    if args.jobs is not None:
        raise UserError("--jobs is an option of --executor local; on Ray, --cpus-per-run sets how many runs fit")
    from benchmark.executors.ray_cluster import RayExecutor

    flags = {name: RAY_FLAGS[name] if getattr(args, name) is None else getattr(args, name) for name in RAY_FLAGS}
    flags["cpus_per_run"] = configs[0].threads if configs else 1  # set from --cpus-per-run by _ray_resources
    return RayExecutor(args.out, args.force, **flags, evaluate_on=evaluate_on)


def grid(args: argparse.Namespace) -> list[RunConfig]:
    import algorithms

    algos = args.algos or algorithms.available()
    holdouts = [cell_line(name).name for name in (args.holdouts or [line.name for line in LINES])]
    if args.executor == "ray":
        _ray_resources(args)
    # held-out line outermost: a partial sweep already holds complete, paired comparisons for the first lines
    configs = [
        config_from_args(args, algo=algo, holdout=holdout, k=k, seed=seed)
        for holdout, k, seed, algo in itertools.product(holdouts, args.ks, args.seeds, algos)
    ]
    return list({config.run_id: config for config in configs}.values())  # a line or seed named twice runs once


def _ray_resources(args: argparse.Namespace) -> None:
    """On Ray a run's torch threads are the CPUs it reserves, and its device follows the GPUs it reserves (Ray
    hides the others from the task), not the driver's."""
    cpus = args.cpus_per_run
    if cpus is not None:
        if cpus < 1:
            raise UserError(f"invalid value for --cpus-per-run: {cpus} (must be >= 1: it is the run's torch threads)")
        if args.threads is not None and args.threads != cpus:
            raise UserError(f"--threads {args.threads} and --cpus-per-run {cpus} differ: on Ray a run has one torch thread per CPU")
        args.threads = cpus
    gpus = args.gpus_per_run or 0
    device = args.device or resolve(args.preset, args.config).device
    if device == "auto":
        args.device = device = "cuda" if gpus else "cpu"
    if device.startswith("cuda") and not gpus:
        raise UserError(f"--device {device} on Ray needs --gpus-per-run: a task that reserves no GPU sees none")
    if device not in ("cuda", "cuda:0") and device.startswith("cuda"):
        raise UserError(f"--device {device} on Ray: use cuda, each run sees only the GPUs Ray gives it")
    if gpus and not device.startswith("cuda"):
        raise UserError(f"--gpus-per-run {gpus:g} reserves GPUs that runs on --device {device} would not use")


def main(args: argparse.Namespace) -> int:
    configs = grid(args)
    console = Console()
    if args.print_config:
        console.print_json(json.dumps([{**config.to_dict(), "run_id": config.run_id} for config in configs]))
        return 0
    evaluate_on = tuple(str(root) for root in args.evaluate_on)
    executor = make_executor(args, configs, evaluate_on)
    from benchmark.store import Store

    store = Store(args.out)
    store.check_writable()
    for root in evaluate_on:
        open_livecell(root)  # a one-line error now, not one per run
    finished = {c.run_id for c in configs if not args.force and store.is_complete(c.run_id)}
    to_run = [c for c in configs if c.run_id not in finished]
    to_evaluate = {c.run_id for c in configs if c.run_id in finished and evaluations_due(c, store, evaluate_on)}
    todo = [c for c in configs if c.run_id not in finished or c.run_id in to_evaluate]  # in the grid's order
    console.print(
        f"sweep: {len(configs)} runs, {len(finished)} already finished, {len(to_run)} to run"
        + (f", {len(to_evaluate)} finished ones to evaluate on {', '.join(evaluate_on)}" if evaluate_on else "")
    )
    started = time.perf_counter()
    results: list[dict] = []
    if todo:
        with progress_view(console) as progress, executor:
            console.print(f"executor: {args.executor}, {executor.describe()}")
            if any(c.data_root is None for c in todo):
                prepare_default_data(progress)  # once, before the estimate and the workers need it
            if to_run:
                _print_estimate(console, to_run, store, executor.slots)
            view = SweepView(progress, len(todo))
            with closing(executor.events(todo)) as events:
                for event in events:
                    view.update(event)
                    if event.kind == FINISHED:
                        results.append(event.summary)
    failed = [s for s in results if s.get("status") != "completed"]
    console.print(f"sweep finished in {time.perf_counter() - started:.0f} s: {len(results) - len(failed)} runs completed, {len(failed)} failed")
    if failed:
        table = Table("run", "error", title="failed runs")
        for s in failed:
            table.add_row(s["run_id"], s.get("error") or "")
        console.print(table)
    return 1 if failed else 0


def _print_estimate(console: Console, todo: list[RunConfig], store, slots: int) -> None:
    import torch

    from benchmark.estimate import estimate_sweep, format_duration

    if any(c.device.startswith("cuda") for c in todo) and not torch.cuda.is_available():
        console.print("estimated time: none (the runs need a GPU and this machine has none to calibrate on)")
        return
    serial = estimate_sweep(todo, store)
    console.print(
        f"estimated time: {format_duration(serial)} one run after another, about "
        f"{format_duration(serial / min(slots, len(todo)))} with {min(slots, len(todo))} at a time on free cores "
        f"(priced from finished runs with the same settings in {store.root}, else a quick calibration)"
    )


class SweepView:
    """One progress bar over the sweep's runs, the same for every executor: finished (done or failed) out of all,
    how many compute now, elapsed time and the remaining time at the pace so far; a line per finished run."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.running, self.failed = progress, set(), 0
        self.task = progress.add_task(self._description(), total=total)

    def _description(self) -> str:
        return f"runs: {len(self.running)} running, {self.failed} failed"

    def update(self, event: Event) -> None:
        run_id = event.config.run_id
        if event.kind == STARTED:
            self.running.add(run_id)
        elif event.kind == RETRIED:
            self.running.discard(run_id)
            self.progress.console.print(f"[yellow]retry[/] {run_id}: {event.detail}")
        elif event.kind == FINISHED:
            self.running.discard(run_id)
            self.failed += event.summary.get("status") != "completed"
            self.progress.advance(self.task)
            self.progress.console.print(_line(event.config, event.summary))
        self.progress.update(self.task, description=self._description())


def _line(config: RunConfig, summary: dict) -> str:
    if summary.get("status") != "completed":
        return f"[red]failed[/] {config.run_id}: {summary.get('error')}"
    low, high = summary["heldout_ci"]
    resumed = f", resumed from meta-step {summary['resumed_from']}" if summary.get("resumed_from") else ""
    evaluated = f", evaluated on {', '.join(summary['evaluations'])}" if summary.get("evaluations") else ""
    if summary.get("evaluation_error"):
        evaluated += f", [red]its evaluation failed[/]: {summary['evaluation_error']}"
    return (f"[green]done[/] {config.run_id}: held-out IoU {summary['heldout_iou']:.3f} [{low:.3f}, {high:.3f}] "
            f"in {summary['wall_s']:.0f} s{resumed}{evaluated}")
