"""The LIVECell reader: one dataset root in the official layout, real or synthetic, one code path.

Layout (what ``images.zip`` and the annotation files unpack to)::

    ROOT/images/livecell_train_val_images/[<Prefix>/]<Prefix>_Phase_..._<Crop>.tif   (train and val)
    ROOT/images/livecell_test_images/[<Prefix>/]...tif
    ROOT/annotations/LIVECell/livecell_coco_{train,val,test}.json                      (all lines)
    ROOT/annotations/LIVECell_single_cells/<folder>/{train,val,test}.json              (one line)

Images may sit flat or in per-line subfolders (``images_per_celltype.zip`` uses the prefix, e.g.
``BT474/``; the lowercase folder ``bt474/`` is accepted too). For a line and split the per-line
annotation file is preferred (it is small; the Kaggle name ``livecell_<folder>_<split>.json`` is
accepted too), else the LIVECell-wide file is filtered by file-name prefix.

A file listed in several splits (LIVECell lists some images in both train and val) belongs to the
first of train, val, test only, so evaluation never sees a training image.

Parsed annotations are memory-mapped and rasterised masks cached on disk (:mod:`tasks.coco`,
:mod:`tasks.mask_cache`); images and masks are read on demand and kept in a bounded in-memory LRU,
so using one line never loads the whole dataset.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.catalogue import LINES, CellLine, cell_line, line_of_file
from tasks.coco import CocoIndex, load_coco
from tasks.errors import DataError
from tasks.mask_cache import cached_instances

SPLITS = ("train", "val", "test")
IMAGE_DIRS = {"train": "livecell_train_val_images", "val": "livecell_train_val_images", "test": "livecell_test_images"}
MEMORY_BYTES = 1 << 30  # default budget of the in-memory image and mask cache


@dataclass(frozen=True)
class ImageInfo:
    id: int
    file_name: str
    line: CellLine
    split: str
    width: int
    height: int
    path: Path


class LiveCell:
    """One dataset root. ``memory_bytes`` bounds the images and masks kept in memory (LRU)."""

    def __init__(self, root: Path | str, memory_bytes: int = MEMORY_BYTES):
        self.root = Path(root)
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "LIVECell root not found"
            raise DataError(f"{self.root}: {what}")
        if not (self.root / "annotations").is_dir():
            raise DataError(
                f"{self.root}: no annotations/ folder (expected the official LIVECell layout: "
                "annotations/LIVECell/livecell_coco_<split>.json or annotations/LIVECell_single_cells/<line>/<split>.json)"
            )
        self._indexes: dict[Path, CocoIndex] = {}
        self._rows: dict[tuple[CellLine, str], tuple[CocoIndex | None, np.ndarray]] = {}
        self._images: dict[tuple[CellLine, str], list[ImageInfo]] = {}
        self._where: dict[tuple[CellLine, str, int], tuple[CocoIndex, int]] = {}  # per-line files may reuse ids
        self._memory = _LRU(memory_bytes)

    def __repr__(self) -> str:
        return f"LiveCell({str(self.root)!r})"

    # ---- what is there -------------------------------------------------------------------------

    def annotation_file(self, line: CellLine | str, split: str) -> Path | None:
        """The file that annotates ``line`` in ``split``: per-line if present, else LIVECell-wide, else None."""
        line, split = cell_line(line), _check_split(split)
        single = self.root / "annotations" / "LIVECell_single_cells"
        for folder in dict.fromkeys((line.folder, line.prefix)):
            for name in (f"{split}.json", f"livecell_{line.folder}_{split}.json"):
                if (single / folder / name).is_file():
                    return single / folder / name
        wide = self.root / "annotations" / "LIVECell" / f"livecell_coco_{split}.json"
        return wide if wide.is_file() else None

    def lines(self, split: str) -> list[CellLine]:
        """Lines that have images in ``split``, in catalogue order."""
        return [line for line in LINES if len(self._line_rows(line, _check_split(split))[1])]

    def images(self, line: CellLine | str, split: str) -> list[ImageInfo]:
        """The images of ``line`` in ``split``, sorted by id; each checked to exist on disk."""
        line, split = cell_line(line), _check_split(split)
        key = (line, split)
        if key not in self._images:
            index, rows = self._line_rows(line, split)
            if index is None:
                raise DataError(f"{self.root}: no annotations for {line.name} in {split} (no per-line or LIVECell-wide {split} file)")
            if not len(rows):
                raise DataError(f"{index.path}: no {split} images of cell line {line.name}")
            folder = self.root / "images" / IMAGE_DIRS[split]
            if not folder.is_dir():
                raise DataError(f"{folder}: image folder not found (unpack images.zip into {self.root})")
            infos = []
            for row in rows:
                name = str(index.file_names[row])
                info = ImageInfo(
                    id=int(index.image_ids[row]), file_name=name, line=line, split=split,
                    width=int(index.widths[row]), height=int(index.heights[row]), path=_find_image(folder, line, name, index.path),
                )
                infos.append(info)
                self._where[(line, split, info.id)] = (index, int(row))
            self._images[key] = infos
        return list(self._images[key])

    # ---- one image -----------------------------------------------------------------------------

    def image(self, info: ImageInfo) -> np.ndarray:
        """uint8 [H, W], read on first use (read-only array; shared through the LRU)."""
        return self._memory.get(("image", info.path), lambda: _read_tiff(info))

    def polygons(self, info: ImageInfo) -> list[np.ndarray]:
        """float64 [N, 2] (x, y) vertices of every polygon of the kept cells, in label order
        (LIVECell's cells are single polygons, so ``polygons(info)[i]`` outlines label i + 1)."""
        index, row = self._locate(info)
        _, kept = cached_instances(index, row)
        annotations = index.annotations(row)
        return [np.array(part).reshape(-1, 2) for a in kept for part in annotations[a]]

    def instances(self, info: ImageInfo) -> np.ndarray:
        """int32 [H, W] instance labels (0 = background); rules in :mod:`tasks.mask_cache`; cached on disk."""
        index, row = self._locate(info)
        return cached_instances(index, row)[0]

    def mask(self, info: ImageInfo) -> np.ndarray:
        """bool [H, W] foreground: instances > 0 (read-only array; shared through the LRU)."""
        index, row = self._locate(info)
        return self._memory.get(("mask", index.digest, info.id), lambda: cached_instances(index, row)[0] > 0)

    # ---- internals -----------------------------------------------------------------------------

    def _index(self, path: Path) -> CocoIndex:
        if path not in self._indexes:
            self._indexes[path] = load_coco(path)
        return self._indexes[path]

    def _line_rows(self, line: CellLine, split: str) -> tuple[CocoIndex | None, np.ndarray]:
        """Rows of ``line`` in the split's annotation file, minus files listed in an earlier split."""
        key = (line, split)
        if key not in self._rows:
            path = self.annotation_file(line, split)
            if path is None:
                self._rows[key] = (None, np.empty(0, dtype=np.int64))
                return self._rows[key]
            index = self._index(path)
            ours = np.array([_line_or_none(str(name)) == line for name in index.file_names], dtype=bool)
            earlier = set()
            for before in SPLITS[: SPLITS.index(split)]:
                other, rows = self._line_rows(line, before)
                if other is not None:
                    earlier.update(str(other.file_names[r]) for r in rows)
            if earlier:
                ours &= np.array([str(name) not in earlier for name in index.file_names], dtype=bool)
            self._rows[key] = (index, np.flatnonzero(ours))
        return self._rows[key]

    def _locate(self, info: ImageInfo) -> tuple[CocoIndex, int]:
        key = (info.line, info.split, info.id)
        if key not in self._where:
            self.images(info.line, info.split)
        try:
            return self._where[key]
        except KeyError:
            raise DataError(f"{self.root}: image id {info.id} ({info.file_name}) is not in the {info.split} split of {info.line.name}") from None


def open_livecell(root: Path | str | None = None) -> LiveCell:
    """The dataset at ``root``; None means the synthetic default set (generated on first use)."""
    if root is None:
        from tasks.synth import default_root

        root = default_root()
    return LiveCell(root)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def _line_or_none(file_name: str) -> CellLine | None:
    try:
        return line_of_file(file_name)
    except ValueError:
        return None


def _find_image(folder: Path, line: CellLine, file_name: str, listed_in: Path) -> Path:
    for candidate in (folder / line.prefix / file_name, folder / line.folder / file_name, folder / file_name):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{folder / file_name}: listed in {listed_in} but missing on disk (also looked in {line.prefix}/ and {line.folder}/)"
    )


def _read_tiff(info: ImageInfo) -> np.ndarray:
    try:
        with Image.open(info.path) as im:
            im.load()
            if im.mode != "L":
                raise DataError(f"{info.path}: expected an 8-bit greyscale image, found mode {im.mode}")
            pixels = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{info.path}: unreadable TIFF ({err})") from None
    if pixels.shape != (info.height, info.width):
        raise DataError(
            f"{info.path}: image is {pixels.shape[1]}x{pixels.shape[0]} but its annotations say {info.width}x{info.height}"
        )
    return pixels


class _LRU:
    """Arrays by key, least recently used dropped first once their bytes exceed the budget."""

    def __init__(self, budget: int):
        self.budget, self.bytes = budget, 0
        self.items: OrderedDict[object, np.ndarray] = OrderedDict()

    def get(self, key: object, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        value.setflags(write=False)
        self.items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes
        return value
