"""``python -m benchmark compact``: rewrite a results folder's records in the form today's store writes.

Records written before references were stored once repeat them under each protocol and keep 17 digits; the
report reads either form alike, so compacting moves no number beyond float32's precision, only bytes.
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
        "RESULTS/runs/ as today's store writes them: the references' rows once, values to float32's precision.",
    )
    parser.add_argument("results", type=Path, nargs="?", default=Path("results"), help="results folder (default: results)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from benchmark.report.records import is_results_folder
    from benchmark.store import compact_records

    if not is_results_folder(args.results):
        raise UserError(f"{args.results} is not a results folder (it has no runs/ folder)")
    count, before, after = compact_records(args.results)
    Console(stderr=True).print(f"rewrote {count} record files: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB", highlight=False)
    return 0
