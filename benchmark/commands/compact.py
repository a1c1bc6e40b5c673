"""``python -m benchmark compact``: rewrite a results folder's records in the form today's store writes.

Records written before references were stored once repeat them under each protocol and keep 17 digits; the
report reads either form alike, and compacting moves no number by more than a float32 rounding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from benchmark.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compact",
        help="rewrite the records of finished runs and evaluations in today's compact form",
        description="Rewrite episodes.csv.gz and images.csv.gz of every finished run and evaluation under "
        "RESULTS/runs/ (and of every other setting's results folder inside RESULTS, e.g. RESULTS/long) as today's "
        "store writes them: the references' rows once, values with float32's 9 significant digits.",
    )
    parser.add_argument("results", type=Path, nargs="?", default=Path("results"), help="results folder (default: results)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from benchmark.report.records import is_results_folder
    from benchmark.report.settings import other_folders
    from benchmark.store import compact_records

    if not is_results_folder(args.results):
        raise UserError(f"{args.results} is not a results folder (it has no runs/ folder)")
    console = Console(stderr=True)
    for folder in (args.results, *other_folders(args.results)):
        changed, before, after = compact_records(folder)
        console.print(f"{folder}: {changed} record files rewritten, {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB", highlight=False, soft_wrap=True)
    return 0
