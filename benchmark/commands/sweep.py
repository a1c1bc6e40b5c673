"""``python -m benchmark sweep``: the leave-one-line-out grid, resumable, on a local process pool.

Every run of the grid goes through the same ``execute`` as ``run``; finished runs are skipped, so an
interrupted sweep continues where it stopped. Runs with the same seed and k evaluate on identical episodes,
so every comparison between algorithms is paired.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmark.errors import UserError
from benchmark.commands.options import add_config_options, config_from_args
from benchmark.commands.run import prepare_default_data, progress_view
from benchmark.config import RunConfig
from tasks.catalogue import LINES, cell_line


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
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, each in its own process (default: 1)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs too")
    add_config_options(parser, skip=("algo", "holdout", "k", "seed", "algo_options"))
    parser.set_defaults(func=main)


def grid(args: argparse.Namespace) -> list[RunConfig]:
    import algorithms

    algos = args.algos or algorithms.available()
    holdouts = [cell_line(name).name for name in (args.holdouts or [line.name for line in LINES])]
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    # held-out line outermost: a partial sweep already holds complete, paired comparisons for the first lines
    configs = [
        config_from_args(args, algo=algo, holdout=holdout, k=k, seed=seed)
        for holdout, k, seed, algo in itertools.product(holdouts, args.ks, args.seeds, algos)
    ]
    return list({config.run_id: config for config in configs}.values())  # a line or seed named twice runs once


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _execute_in_worker(config: RunConfig, out: Path, force: bool) -> dict:
    from benchmark.execute import execute
    from benchmark.store import Store

    try:
        return execute(config, Store(out), force=force)
    except Exception as err:  # reported in the sweep's table; the store has marked the run failed
        return {"run_id": config.run_id, "status": "failed", "error": f"{type(err).__name__}: {err}", "skipped": False}


def main(args: argparse.Namespace) -> int:
    configs = grid(args)
    console = Console()
    if args.print_config:
        console.print_json(json.dumps([{**config.to_dict(), "run_id": config.run_id} for config in configs]))
        return 0
    from benchmark.store import Store

    store = Store(args.out)
    store.check_writable()
    todo = [c for c in configs if args.force or not store.is_complete(c.run_id)]
    console.print(f"sweep: {len(configs)} runs, {len(configs) - len(todo)} already finished, {len(todo)} to run, {args.jobs} at a time")
    if todo:
        from benchmark.estimate import estimate_sweep, format_duration

        serial = estimate_sweep(todo, store)
        console.print(
            f"estimated time: {format_duration(serial)} one run after another, about "
            f"{format_duration(serial / min(args.jobs, len(todo)))} with --jobs {args.jobs} on free cores "
            f"(priced from finished runs with the same settings in {args.out}, else a quick calibration)"
        )
    started = time.perf_counter()
    results: list[dict] = []
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with progress_view(console) as progress, ProcessPoolExecutor(
        args.jobs, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,),
        max_tasks_per_child=1,  # a fresh process per run: its peak memory is its own
    ) as pool:
        if any(c.data_root is None for c in todo):
            prepare_default_data(progress)  # once, before the workers all need it
        overall = progress.add_task("sweep", total=len(todo))
        pending: dict[Future, RunConfig] = {pool.submit(_execute_in_worker, c, args.out, args.force): c for c in todo}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    config = pending.pop(future)
                    summary = future.result()
                    results.append(summary)
                    progress.advance(overall)
                    progress.console.print(_line(config, summary))
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    failed = [s for s in results if s.get("status") != "completed"]
    console.print(f"sweep finished in {time.perf_counter() - started:.0f} s: {len(results) - len(failed)} runs completed, {len(failed)} failed")
    if failed:
        table = Table("run", "error", title="failed runs")
        for s in failed:
            table.add_row(s["run_id"], s.get("error") or "")
        console.print(table)
    return 1 if failed else 0


def _line(config: RunConfig, summary: dict) -> str:
    if summary.get("status") != "completed":
        return f"[red]failed[/] {config.run_id}: {summary.get('error')}"
    low, high = summary["heldout_ci"]
    return f"[green]done[/] {config.run_id}: held-out IoU {summary['heldout_iou']:.3f} [{low:.3f}, {high:.3f}] in {summary['wall_s']:.0f} s"
