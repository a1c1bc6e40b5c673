"""A synthetic LIVECell look-alike, written in the official layout so one reader serves real and synthetic data.

Eight cell lines (morphology and appearance in :mod:`tasks.synth.styles`), images spread over 4-hourly timepoints
with density growing over time, train/val wells disjoint from test wells. The same seed gives the same bytes: every
image draws from its own seed, spawned from (seed, line, split, image), so the result does not depend on how the
lines are spread over worker processes.

Default set, 120 images per line = 60 train + 20 val + 40 test (the 3:1:2 rule of split_sizes): the 40 evaluation
episodes of a held-out line draw their 160 query crops from 40 test images, so the report's statistics have images,
not crops of a handful of them, as their unit; the val split serves validation episodes of k = 3 + 4 queries.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from tasks.catalogue import LINES, CellLine
from tasks.cache import cache_root
from tasks.synth import layout
from tasks.synth.render import rasterise, render
from tasks.synth.shapes import cell_count, cells_for_image
from tasks.synth.styles import style_of

GENERATOR_VERSION = "7"
DEFAULT_IMAGES_PER_LINE = 120
MAX_IMAGES_PER_LINE = 200  # well x location x crop x timepoint names stay plentiful
WELL_ROWS, WELL_COLUMNS = "ABCDEFGH", range(1, 13)
TRAIN_VAL_WELLS, TEST_WELLS = 3, 2

__all__ = ["GENERATOR_VERSION", "generate", "default_root", "split_sizes"]


def split_sizes(images_per_line: int) -> dict[str, int]:
    """Images per split for one line: val ~ 1/6, test ~ 1/3, train the rest (60/20/40 for 120)."""
    if not isinstance(images_per_line, int) or not 3 <= images_per_line <= MAX_IMAGES_PER_LINE:
        raise ValueError(
            f"images_per_line must be an integer from 3 (one per split) to {MAX_IMAGES_PER_LINE}, got {images_per_line!r}"
        )
    val = max(1, round(images_per_line / 6))
    test = max(1, round(images_per_line / 3))
    return {"train": images_per_line - val - test, "val": val, "test": test}


def _plan(rng: np.random.Generator, line: CellLine, sizes: dict[str, int]) -> dict[str, list[tuple[str, float]]]:
    """(file name, growth progress in [0, 1]) per split. Timepoints are spread evenly over the line's time course."""
    steps = style_of(line).days * 24 // layout.HOURS_PER_STEP
    wells = rng.choice([f"{r}{c}" for r in WELL_ROWS for c in WELL_COLUMNS], TRAIN_VAL_WELLS + TEST_WELLS, replace=False)
    pools = {"train": wells[:TRAIN_VAL_WELLS], "val": wells[:TRAIN_VAL_WELLS], "test": wells[TRAIN_VAL_WELLS:]}
    used: set[str] = set()
    plan = {}
    for split, size in sizes.items():
        entries = []
        for step in np.round(np.linspace(0, steps, size) + rng.uniform(-0.5, 0.5, size)).clip(0, steps).astype(int):
            while True:
                name = layout.image_name(
                    line, str(rng.choice(pools[split])), int(rng.integers(1, 3)),
                    int(step) * layout.HOURS_PER_STEP, int(rng.integers(1, 5)),
                )
                if name not in used:
                    break
            used.add(name)
            entries.append((name, step / steps))
        plan[split] = entries
    return plan


def _generate_line(root: Path, seed: int, line_index: int, sizes: dict[str, int]) -> dict[str, list]:
    """Write one line's TIFFs; return per split [(file name, [polygon, ...]), ...]."""
    line = LINES[line_index]
    style = style_of(line)
    plan_seed, *image_seeds = np.random.SeedSequence([seed, line_index]).spawn(1 + sum(sizes.values()))
    plan = _plan(np.random.default_rng(plan_seed), line, sizes)
    out: dict[str, list] = {}
    seeds = iter(image_seeds)
    for split, entries in plan.items():
        out[split] = []
        for name, progress in entries:
            rng = np.random.default_rng(next(seeds))
            cells = cells_for_image(rng, style, cell_count(rng, style, progress), layout.WIDTH, layout.HEIGHT)
            image = render(rng, style, cells, rasterise(cells, layout.WIDTH, layout.HEIGHT))
            layout.image_path(root, split, name).write_bytes(layout.tiff_bytes(image))
            out[split].append((name, [cell.polygon for cell in cells]))
    return out


def _workers() -> int:
    return max(1, min(len(LINES), len(os.sched_getaffinity(0))))


def generate(
    root: Path | str,
    seed: int = 0,
    images_per_line: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a synthetic dataset in the official LIVECell layout under `root` (which must be absent or empty).

    `images_per_line` defaults to 120 (see :func:`split_sizes`). `progress(done, total)` is called as each cell line
    finishes (total = 8). Lines run in parallel processes, one per available core; the bytes do not depend on it.
    """
    root = Path(root)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    sizes = split_sizes(DEFAULT_IMAGES_PER_LINE if images_per_line is None else images_per_line)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root}: not an empty directory; synthetic data is written only into a new or empty one")
    for folder in set(layout.IMAGE_DIRS.values()):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)

    results: dict[int, dict[str, list]] = {}
    workers = _workers()
    if workers == 1:
        for i in range(len(LINES)):
            results[i] = _generate_line(root, seed, i, sizes)
            if progress:
                progress(len(results), len(LINES))
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_generate_line, root, seed, i, sizes): i for i in range(len(LINES))}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if progress:
                    progress(len(results), len(LINES))
    _write_annotations(root, seed, results)
    return root


def _write_annotations(root: Path, seed: int, results: dict[int, dict[str, list]]) -> None:
    """COCO files, LIVECell-wide and per line; one id counter runs over images and annotations of all splits."""
    info = {
        "year": "2021",
        "version": GENERATOR_VERSION,
        "description": f"Synthetic LIVECell look-alike (fewshot-cellseg generator {GENERATOR_VERSION}, seed {seed})",
        "contributor": "fewshot-cellseg",
        "url": "",
        "date_created": "2021/01/19",
    }
    next_id = 1
    for split in layout.SPLITS:
        wide_images, wide_annotations = [], []
        for line_index, line in enumerate(LINES):
            images, annotations = [], []
            for name, polygons in results[line_index][split]:
                image_id = next_id
                url = f"synthetic://fewshot-cellseg/{GENERATOR_VERSION}/{seed}/{name}"
                images.append(layout.image_record(image_id, name, url))
                for offset, polygon in enumerate(polygons, start=1):
                    annotations.append(layout.annotation_record(image_id + offset, image_id, polygon))
                next_id = image_id + len(polygons) + 1
            _write_json(layout.line_annotation_path(root, line, split), layout.coco_document(info, images, annotations))
            wide_images += images
            wide_annotations += annotations
        _write_json(layout.wide_annotation_path(root, split), layout.coco_document(info, wide_images, wide_annotations))


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, separators=(",", ":")))


def default_root(progress: Callable[[int, int], None] | None = None) -> Path:
    """The default synthetic dataset (seed 0, default size): generated once per GENERATOR_VERSION, then reused.

    It is written into a temporary sibling folder and renamed into place, so a crash or a concurrent caller never
    leaves a half-written dataset under the final name (a racing loser discards its copy and uses the winner's).
    """
    target = cache_root() / f"synthetic-{GENERATOR_VERSION}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        generate(staging, progress=progress)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
