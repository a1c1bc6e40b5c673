"""``python -m benchmark run``: meta-train one algorithm with one line held out, evaluate on all eight."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from benchmark.commands.options import add_config_options, config_from_args


def progress_view(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def prepare_default_data(progress: Progress) -> None:
    """Generate the synthetic default set on first use (about a minute), with a progress bar; a no-op afterwards."""
    from tasks.synth import default_root

    task = None

    def report(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("synthetic LIVECell (first use)", total=total)
        progress.update(task, completed=done)

    default_root(progress=report)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="meta-train one algorithm with one cell line held out, then evaluate on all eight",
        description="Meta-train ALGO on the seven other lines, adapt from k support images on every line's test "
        "split (the held-out line is the headline), and store the records under OUT/runs/<run-id>/. A finished run "
        "with the same configuration is skipped; an interrupted one resumes from its last checkpoint.",
    )
    add_config_options(parser)
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument("--force", action="store_true", help="rerun from scratch even if the run is finished")
    parser.set_defaults(func=main)


def summary_table(summary: dict) -> Table:
    config = summary["config"]
    table = Table(title=f"{config['algo']} · held out {config['holdout']} · k={config['k']} · seed {config['seed']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    low, high = summary["heldout_ci"]
    table.add_row(f"held-out IoU after {config['inner_steps']} steps (95% CI)", f"{summary['heldout_iou']:.3f} [{low:.3f}, {high:.3f}]")
    tuned = summary.get("tuned")
    if tuned:
        selected = tuned["adaptation_rate"]
        rate = "its own rates" if selected["rate"] is None else f"rate {selected['rate']:g}"
        low, high = tuned["heldout_ci"]
        table.add_row(
            f"  at the {rate}, selected on {selected['episodes']} validation episodes",
            f"{tuned['heldout_iou']:.3f} [{low:.3f}, {high:.3f}]",
        )
    table.add_row("held-out IoU before adaptation (step 0)", f"{summary['heldout_step0_iou']:.3f}")
    if summary.get("seen_iou") is not None:
        table.add_row("IoU on the 7 meta-training lines (test split)", f"{summary['seen_iou']:.3f}")
    table.add_row("held-out episodes", str(summary["episodes"]))
    table.add_row("wall time", f"{summary['wall_s']:.1f} s")
    table.add_row("peak memory (process RSS)" if config["device"] == "cpu" else "peak GPU memory", f"{summary['peak_mem_mb']:.0f} MB")
    table.add_row("meta-training forward-backward passes", f"{summary['passes']:,}")
    return table


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    console = Console()
    if args.print_config:
        console.print_json(json.dumps({**config.to_dict(), "run_id": config.run_id}))
        return 0
    from benchmark.execute import execute  # heavy imports (torch) only when a run is asked for
    from benchmark.store import Store

    store = Store(args.out)
    store.check_writable()
    with progress_view(console) as progress:
        if config.data_root is None:
            prepare_default_data(progress)
        summary = execute(config, store, force=args.force, progress=progress)
    if summary["skipped"]:
        console.print(f"[dim]already finished: {store.run_dir(config.run_id)} (use --force to rerun)[/]")
    elif summary.get("resumed_from"):
        console.print(f"[dim]resumed from meta-step {summary['resumed_from']}[/]")
    console.print(summary_table(summary))
    console.print(f"records: {store.run_dir(config.run_id)}")
    return 0
