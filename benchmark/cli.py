"""``python -m benchmark``: one sub-command per module in :mod:`benchmark.commands`.

Each command module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` (args -> exit code). Expected failures (:mod:`benchmark.errors`, data errors, invalid values) are
printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rich.console import Console
from rich.markup import escape

from benchmark.errors import RunFailed, UserError

__all__ = ["UserError", "build_parser", "main"]

COMMANDS = ("data", "run", "sweep", "report", "bench", "evaluate", "predict", "compact")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="Few-shot cell segmentation benchmark of gradient-based meta-learners on LIVECell.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"benchmark.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tasks.errors import DataError  # imported late: the parser must build fast

    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        return int(args.func(args) or 0)
    except (UserError, RunFailed, DataError, ValueError) as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except OSError as err:  # a folder that cannot be written, a file where a folder should be, a full disk
        console.print(f"[bold red]error:[/] {escape(os_error_line(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished results were kept")
        return 130


def os_error_line(err: OSError) -> str:
    """One line naming the path and what the system said, e.g. 'results/runs: Not a directory'."""
    if err.filename is None:
        return err.strerror or str(err)
    where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
    return f"{where}: {err.strerror or err}"


if __name__ == "__main__":
    sys.exit(main())
