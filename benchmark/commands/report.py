"""``python -m benchmark report``: tables and plots from every completed run in a results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from benchmark.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="tables (Markdown, CSV) and plots (PNG) from the completed runs of a results folder",
        description="Summarise every completed run under RESULTS/runs/: the leave-one-line-out table, a table per "
        "held-out line, paired comparisons against finetune, the seed paper's numbers, and plots; indexed by "
        "OUT/report.md. Works on a partial sweep: combinations not run yet show as '—'.",
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder to read (default: results)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the results folder)")
    parser.add_argument(
        "--practical-difference", type=float, default=None, metavar="IOU",
        help="paired differences smaller than this are reported as 'no difference', whatever their p (default: 0.01)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from benchmark.report import build_report  # imported late: pandas, scipy, matplotlib load slowly
    from benchmark.report.records import is_results_folder
    from benchmark.stats import PRACTICAL_DIFFERENCE

    if args.practical_difference is not None and not args.practical_difference >= 0:
        raise UserError(f"--practical-difference must be a non-negative IoU, got {args.practical_difference}")
    if not is_results_folder(args.results):
        raise UserError(f"{args.results} is not a results folder (it has no runs/ folder); point --results at one")
    out = args.out if args.out is not None else args.results
    console = Console(stderr=True)
    with console.status("computing confidence intervals and drawing plots"):
        written = build_report(args.results, out, PRACTICAL_DIFFERENCE if args.practical_difference is None else args.practical_difference)
    console.print(f"wrote {len(written)} files; index: {out / 'report.md'}", highlight=False)
    return 0
