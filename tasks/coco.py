"""One COCO annotation file, parsed once, freed of LIVECell's quirks, and cached as flat arrays.

The official ``livecell_coco_train.json`` holds about a million polygons; ``json.load`` of it takes
tens of seconds and gigabytes of Python objects. We parse each file once, keep only what the reader
needs (images, and each annotation's polygon parts as float64 vertices, exactly as written) and
store it under the cache, keyed by the SHA-1 of the file's bytes. Later opens memory-map the arrays,
so a run that uses one cell line touches only that line's polygons.

Quirks handled here (each is a known property of the published files):

* ``annotations`` stored as a dict keyed by id (the Kaggle copy), not a list: its values are used.
* the same image (file name) listed under two ids: LIVECell annotated some images twice. Merging both
  would double every cell, so one listing is kept: the one with the most annotations (ties: the
  lowest id). The other id and its annotations are dropped.
* polygon parts with fewer than 3 vertices enclose no pixel (and pycocotools would misread a
  2-vertex part as a box): they are dropped; an annotation left with no part is dropped.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.cache import atomic_write, cache_root
from tasks.errors import DataError

PARSE_VERSION = 2  # bump when the parsed form or the quirk rules change


@dataclass(frozen=True)
class CocoIndex:
    """A parsed annotation file. Row i of the image arrays is one image (sorted by id); its
    annotations are ``ann_start[i]:ann_start[i+1]``; annotation a's parts are
    ``part_start[a]:part_start[a+1]``; part p's vertices are ``coords[coord_start[p]:coord_start[p+1]]``
    as x0, y0, x1, y1, ..."""

    path: Path
    digest: str
    image_ids: np.ndarray  # int64 [I]
    file_names: np.ndarray  # str [I]
    widths: np.ndarray  # int64 [I]
    heights: np.ndarray  # int64 [I]
    ann_start: np.ndarray  # int64 [I + 1]
    ann_ids: np.ndarray  # int64 [A]
    part_start: np.ndarray  # int64 [A + 1]
    coord_start: np.ndarray  # int64 [P + 1]
    coords: np.ndarray  # float64 [C]

    def annotations(self, row: int) -> list[list[np.ndarray]]:
        """Each annotation of image ``row`` as its list of flat float64 parts (x0, y0, x1, y1, ...)."""
        out = []
        for a in range(self.ann_start[row], self.ann_start[row + 1]):
            parts = range(self.part_start[a], self.part_start[a + 1])
            out.append([self.coords[self.coord_start[p] : self.coord_start[p + 1]] for p in parts])
        return out


_TABLES = ("image_ids", "file_names", "widths", "heights", "ann_start", "ann_ids", "part_start", "coord_start")


def load_coco(path: Path | str) -> CocoIndex:
    """The parsed form of ``path``, from the cache when this exact content was parsed before.

    Cached as two files: the tables (``.npz``, loaded whole) and the vertices (``.npy``, memory-mapped).
    A damaged cache entry is rebuilt."""
    path = Path(path)
    digest = file_digest(path)
    stem = cache_root() / "coco" / f"{digest}-v{PARSE_VERSION}"
    tables_path, coords_path = stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".coords.npy")
    for attempt in range(2):
        if attempt or not tables_path.exists():
            arrays = _parse(path)
            coords = arrays.pop("coords")
            atomic_write(coords_path, lambda f: np.save(f, coords, allow_pickle=False))
            atomic_write(tables_path, lambda f: np.savez(f, **arrays))  # written last: its presence means complete
        try:
            with np.load(tables_path, allow_pickle=False) as stored:
                tables = {name: stored[name] for name in _TABLES}
            coords = np.load(coords_path, mmap_mode="r", allow_pickle=False)
            return CocoIndex(path=path, digest=digest, coords=coords, **tables)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue
    raise DataError(f"{stem}: cannot write a readable annotation cache there")


def file_digest(path: Path) -> str:
    """SHA-1 of the file's bytes. Remembered by (size, mtime) so a 1.5 GB file is hashed once."""
    try:
        stat = path.stat()
    except OSError as err:
        raise DataError(f"{path}: annotation file not found ({err.strerror})") from None
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    memo_path = cache_root() / "coco" / "digests.json"
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns]
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo and memo[key][:2] == stamp:
        return memo[key][2]
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha1").hexdigest()
    memo[key] = [*stamp, digest]
    atomic_write(memo_path, lambda f: f.write(json.dumps(memo).encode()))
    return digest


def _read_json(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg} (truncated or corrupt?)") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a JSON text file ({err.reason})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO file (top level is a {type(data).__name__}, not an object)")
    return data


def _parse(path: Path) -> dict[str, np.ndarray]:
    data = _read_json(path)
    for key in ("images", "annotations"):
        if key not in data:
            raise DataError(f"{path}: not a COCO file (no '{key}' key)")
    images, annotations = data["images"], data["annotations"]
    if isinstance(annotations, dict):  # the Kaggle copy: {"<id>": {...}, ...}
        annotations = list(annotations.values())
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DataError(f"{path}: 'images' and 'annotations' must be lists")

    by_id: dict[int, tuple[str, int, int]] = {}
    for n, image in enumerate(images):
        try:
            entry = (str(image["file_name"]), int(image["width"]), int(image["height"]))
            image_id = int(image["id"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: images[{n}] lacks a valid {err} (needs id, file_name, width, height)") from None
        if by_id.get(image_id, entry) != entry:
            raise DataError(f"{path}: image id {image_id} is listed twice with different files")
        by_id[image_id] = entry

    per_image: dict[int, list[tuple[int, list[np.ndarray]]]] = {image_id: [] for image_id in by_id}
    for n, ann in enumerate(annotations):
        try:
            ann_id, image_id, segmentation = int(ann["id"]), int(ann["image_id"]), ann["segmentation"]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: annotations[{n}] lacks a valid {err} (needs id, image_id, segmentation)") from None
        if image_id not in per_image:
            raise DataError(f"{path}: annotation {ann_id} refers to image {image_id}, which is not listed")
        if not isinstance(segmentation, list):
            raise DataError(f"{path}: annotation {ann_id} is not a polygon (RLE segmentations are not supported)")
        parts = []
        for part in segmentation:
            try:
                xy = np.asarray(part, dtype=np.float64)
            except (TypeError, ValueError):
                xy = np.empty((1, 1))
            if xy.ndim != 1 or len(xy) % 2:
                raise DataError(f"{path}: annotation {ann_id} has a polygon that is not a flat list of x, y pairs")
            if len(xy) >= 6:
                parts.append(xy)
        if parts:
            per_image[image_id].append((ann_id, parts))

    # One listing per file name: the one with the most annotations, ties to the lowest id.
    best: dict[str, int] = {}
    for image_id in sorted(by_id):
        name = by_id[image_id][0]
        if name not in best or len(per_image[image_id]) > len(per_image[best[name]]):
            best[name] = image_id
    kept = sorted(best.values())

    ann_start, ann_ids, part_start, coord_start, chunks = [0], [], [0], [0], []
    for image_id in kept:
        for ann_id, parts in sorted(per_image[image_id], key=lambda a: a[0]):
            ann_ids.append(ann_id)
            for xy in parts:
                chunks.append(xy)
                coord_start.append(coord_start[-1] + len(xy))
            part_start.append(part_start[-1] + len(parts))
        ann_start.append(len(ann_ids))
    names = [by_id[i][0] for i in kept]
    return {
        "image_ids": np.array(kept, dtype=np.int64),
        "file_names": np.array(names, dtype=f"<U{max((len(n) for n in names), default=1)}"),
        "widths": np.array([by_id[i][1] for i in kept], dtype=np.int64),
        "heights": np.array([by_id[i][2] for i in kept], dtype=np.int64),
        "ann_start": np.array(ann_start, dtype=np.int64),
        "ann_ids": np.array(ann_ids, dtype=np.int64),
        "part_start": np.array(part_start, dtype=np.int64),
        "coord_start": np.array(coord_start, dtype=np.int64),
        "coords": np.concatenate(chunks) if chunks else np.empty(0, dtype=np.float64),
    }
