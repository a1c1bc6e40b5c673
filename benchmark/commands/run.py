"""``python -m benchmark run``: meta-train one algorithm with one line held out, evaluate on all eight."""

from __future__ import annotations

import argparse
import json
import math
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


def _iou_cells(numbers: dict) -> list[str]:
    low, high = numbers["heldout_ci"]
    interval = f"{numbers['heldout_iou']:.3f}" + ("" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]")
    seen = numbers.get("seen_iou")
    return [interval, f"{numbers['heldout_step0_iou']:.3f}", "—" if seen is None else f"{seen:.3f}"]


def summary_table(summary: dict) -> Table:
    """The run's IoU beside the references' on the same episodes."""
    config = summary["config"]
    table = Table(
        title=f"{config['algo']} · held out {config['holdout']} · k={config['k']} · seed {config['seed']}\n"
        f"held-out IoU after {config['inner_steps']} steps (95% CI), beside references on the same episodes",
        caption="step 0: before adapting; seen: the 7 meta-training lines' test split",
    )
    table.add_column("method")
    table.add_column("held-out", justify="right")
    table.add_column("step 0", justify="right")
    table.add_column("seen", justify="right")
    tuned = summary.get("tuned")
    table.add_row(f"[bold]{config['algo']}[/]", *_iou_cells(summary), end_section=not tuned)
    if tuned:
        selected = tuned["adaptation_rate"]
        rate = "its own rates" if selected["rate"] is None else f"rate {selected['rate']:g}"
        table.add_row(f"  at {rate}", *_iou_cells(tuned), end_section=True)
        table.caption += f"; rate selected on {selected['episodes']} validation episodes of the meta-training lines"
    references = summary.get("references") or {}
    best = max(references, key=lambda name: references[name]["heldout_iou"], default=None)
    for name, numbers in references.items():  # the best reference in full colour, the others dimmed
        table.add_row(f"{name} (ref.)", *_iou_cells(numbers), style=None if name == best else "dim")
    if not references:
        table.caption += "\nno references: this run was recorded before they existed (--force reruns it)"
    return table


def flop_text(flops: float) -> str:
    """FLOPs in the unit that keeps three significant digits readable: 1.43 TFLOP, 18.2 GFLOP."""
    return f"{flops / 1e12:.2f} TFLOP" if flops >= 1e12 else f"{flops / 1e9:.3g} GFLOP"


def facts_table(summary: dict) -> Table:
    config = summary["config"]
    table = Table(show_header=False, box=None)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("held-out episodes", str(summary["episodes"]))
    collapse = summary.get("collapse")
    if collapse:
        table.add_row(
            f"held-out episodes predicted > {collapse['threshold']:.0%} cell, before -> after adapting",
            f"{collapse['before']} -> {collapse['after']} of {collapse['episodes']}",
        )
    table.add_row("wall time", f"{summary['wall_s']:.1f} s")
    table.add_row("peak memory (process RSS)" if config["device"] == "cpu" else "peak GPU memory", f"{summary['peak_mem_mb']:.0f} MB")
    table.add_row("meta-training forward-backward passes", f"{summary['passes']:,}")
    if summary.get("train_flops"):
        table.add_row("meta-training FLOPs (counted per configuration)", flop_text(summary["train_flops"]))
    return table


def collapse_warning(summary: dict) -> str | None:
    """A warning when the algorithm predicts (nearly) every query pixel as cell on most held-out episodes."""
    from benchmark.observations import collapsed

    if not collapsed(summary):
        return None
    found = summary["collapse"]
    return (
        f"[bold yellow]warning:[/] after adapting, {summary['config']['algo']} predicts more than "
        f"{found['threshold']:.0%} of the query pixels as cell on {found['after']} of {found['episodes']} held-out "
        "episodes: it has collapsed toward all-foreground (compare the all-foreground reference)"
    )


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
    console.print(facts_table(summary))
    warning = collapse_warning(summary)
    if warning:
        console.print(warning)
    console.print(f"records: {store.run_dir(config.run_id)}")
    return 0
