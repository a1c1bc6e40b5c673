"""``python -m benchmark data``: get LIVECell (download), make its synthetic look-alike (synth), describe either (info)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from benchmark.errors import UserError

HEADERS = {  # summarize() column -> table header (narrow: the table must fit 80 columns)
    "line": "line", "split": "split", "images": "img", "cells": "cells", "cells_per_image": "per img",
    "median_area": "area", "solidity": "solidity", "circularity": "circ.", "cover_fraction": "cover",
    "median_intensity": "intens.",
}
LEGEND = {  # header -> what it means, shown under the table
    "line": "cell line", "split": "train, val or test", "img": "images", "cells": "annotated cells in all images",
    "per img": "median cells per image", "area": "median cell area (px)",
    "solidity": "median over cells of area / convex-hull area", "circ.": "circularity, median over cells of "
    "4 pi area / perimeter^2", "cover": "mean foreground fraction", "intens.": "median over images of the median grey level",
}
FORMATS = {"cells_per_image": "{:.0f}", "median_area": "{:.0f}", "solidity": "{:.2f}", "circularity": "{:.2f}",
           "cover_fraction": "{:.2f}", "median_intensity": "{:.0f}"}
ROOT_HELP = "a dataset folder in the official LIVECell layout (images/, annotations/)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data",
        help="download LIVECell, generate the synthetic look-alike, or describe a dataset",
        description="Datasets in the official LIVECell layout. Every command that takes a dataset reads the real one "
        "(--root) or, without --root, the synthetic default set, generated once into the cache folder "
        "($FEWSHOT_CELLSEG_CACHE, else ~/.cache/fewshot-cellseg).",
    )
    group = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    download = group.add_parser(
        "download",
        help="fetch the official LIVECell images (1.3 GB unpacked) and annotation files",
        description="Fetch images.zip and the annotation files (LIVECell-wide and per cell line) from the public "
        "bucket into ROOT, unpacking the images into ROOT/images/. Sizes are checked; an interrupted download "
        "resumes where it stopped when run again; files already complete are skipped.",
    )
    download.add_argument("--root", type=Path, required=True, help="folder to download into (created if absent)")
    download.add_argument(
        "--base-url", default=None, metavar="URL",
        help="where the LIVECell_dataset_2021/ files are served (default: the public S3 bucket, "
        "https://livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021/)",
    )
    download.set_defaults(func=run_download)

    synth = group.add_parser(
        "synth",
        help="generate the synthetic LIVECell look-alike",
        description="Write a synthetic dataset in the official LIVECell layout and format: eight cell lines, "
        "phase-contrast-like images, COCO polygons. The same seed gives the same bytes. Without --root, makes "
        "sure the default set (seed 0, default size) exists in the cache folder and prints where it is.",
    )
    synth.add_argument("--root", type=Path, default=None, help="a new or empty folder to write into (default: the cached default set)")
    synth.add_argument("--seed", type=int, default=None, help="random seed, >= 0 (default: 0; needs --root)")
    synth.add_argument(
        "--images-per-line", type=int, default=None, metavar="N",
        help="images per cell line over all splits, split about 3:1:2 into train:val:test (default: 120 = 60 + 20 + 40; needs --root)",
    )
    synth.set_defaults(func=run_synth)

    info = group.add_parser(
        "info",
        help="per cell line and split: images, cells, cell shape, cover, intensity",
        description="Describe a dataset, one row per cell line and split: images, cells (and per image), median cell "
        "area (px), median solidity and circularity of the cell polygons, mean foreground cover fraction, and "
        "the median image intensity.",
    )
    info.add_argument("--root", type=Path, default=None, help=f"{ROOT_HELP} (default: the synthetic default set)")
    info.add_argument("--json", action="store_true", help="print the rows as JSON (one object per row) instead of a table")
    info.set_defaults(func=run_info)


def run_download(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from tasks.download import BASE_URL, download

    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<22}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        outcome = download(args.root, args.base_url or BASE_URL, progress=progress)
    counts = {state: sum(1 for s in outcome.values() if s == state) for state in ("fetched", "resumed", "present")}
    console.print(
        f"LIVECell in {args.root}: {counts['fetched']} fetched, {counts['resumed']} resumed, {counts['present']} already present",
        highlight=False,
    )
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from tasks import synth

    console = Console(stderr=True)
    if args.root is None:
        if args.seed is not None or args.images_per_line is not None:
            raise UserError("--seed and --images-per-line need --root: the default set always uses seed 0 and the default size")
        with console.status("generating the default synthetic set (once)"):
            root = synth.default_root()
        console.print(f"default synthetic set (generator {synth.GENERATOR_VERSION}): {root}", highlight=False)
        return 0
    with console.status("generating") as status:
        root = synth.generate(
            args.root, seed=0 if args.seed is None else args.seed, images_per_line=args.images_per_line,
            progress=lambda done, total: status.update(f"generating: {done}/{total} cell lines"),
        )
    console.print(f"synthetic LIVECell (generator {synth.GENERATOR_VERSION}) written to {root}", highlight=False)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from tasks.livecell import open_livecell
    from tasks.morphology import summarize

    console = Console(stderr=True)
    with console.status("reading the dataset"):
        data = open_livecell(args.root)
        table = summarize(data)
    if args.json:
        json.dump(json.loads(table.to_json(orient="records")), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    view = Table(
        title=f"{data.root}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
        caption="; ".join(f"{header}: {meaning}" for header, meaning in LEGEND.items()), caption_justify="left",
    )
    for column, header in HEADERS.items():
        view.add_column(header, justify="left" if column in ("line", "split") else "right", no_wrap=True)
    for row in table.to_dict(orient="records"):
        view.add_row(*(FORMATS.get(column, "{}").format(row[column]) for column in HEADERS))
    Console().print(view)
    return 0
