"""Few-shot episodes: k support and q query image crops of one cell line, drawn reproducibly.

An episode is a pure function of (line, split, k, q, crop, seed, index): every algorithm is evaluated
on identical episodes, and the manifest (image ids and crop boxes) reproduces one exactly through
:func:`load_episode`, even after the sampler changes.

Drawing rule: the line's images in the split are shuffled by a stream of (seed, index, line, split, q,
crop), *not* k; the first q are the query set, the next k the support set. In each, a crop position
is drawn uniformly from that image's own stream (its place in the shuffle); a crop whose foreground
covers less than ``MIN_FOREGROUND`` of its pixels is redrawn, up to ``MAX_DRAWS`` positions in the
same image, after which the position with the most foreground is kept. The rule applies to query
crops too: an (almost) empty query crop has no meaningful foreground IoU. Whole images (crop None)
are never redrawn. Leaving k out of the draw makes episodes that differ only in k share their query
crops exactly (and the k = 1 support image is the first of the k = 3 ones), so the effect of k is a
paired comparison. A line with fewer than k + q images follows :func:`sample_small_episode` instead.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from tasks.batch import TaskBatch
from tasks.catalogue import CellLine, cell_line
from tasks.errors import DataError

MIN_FOREGROUND = 0.05  # fraction of a crop's pixels
MAX_DRAWS = 32

Box = tuple[int, int, int, int]  # top, left, height, width


@dataclass(frozen=True)
class EpisodeManifest:
    line: str  # canonical cell-line name
    split: str
    k: int
    q: int
    crop: int | None
    seed: int
    index: int
    support: tuple[tuple[int, Box], ...]  # (image id, box)
    query: tuple[tuple[int, Box], ...]

    def to_dict(self) -> dict:
        """JSON-ready: boxes and pairs as lists."""
        pairs = lambda items: [[image_id, list(box)] for image_id, box in items]  # noqa: E731
        return {
            "line": self.line, "split": self.split, "k": self.k, "q": self.q, "crop": self.crop,
            "seed": self.seed, "index": self.index, "support": pairs(self.support), "query": pairs(self.query),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "EpisodeManifest":
        try:
            pairs = lambda items: tuple((int(i), tuple(int(v) for v in box)) for i, box in items)  # noqa: E731
            manifest = cls(
                line=cell_line(d["line"]).name, split=str(d["split"]), k=int(d["k"]), q=int(d["q"]),
                crop=None if d["crop"] is None else int(d["crop"]), seed=int(d["seed"]), index=int(d["index"]),
                support=pairs(d["support"]), query=pairs(d["query"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not an episode manifest: {type(err).__name__}: {err}") from None
        boxes = manifest.support + manifest.query
        if manifest.k < 1 or manifest.q < 1 or len(manifest.support) != manifest.k or len(manifest.query) != manifest.q or any(len(b) != 4 for _, b in boxes):
            raise ValueError(
                f"not an episode manifest: k={manifest.k} and q={manifest.q} (both >= 1) need as many support and query "
                f"(image id, 4-int box) pairs, got {len(manifest.support)} and {len(manifest.query)}"
            )
        return manifest


@dataclass(frozen=True)
class Episode:
    support_x: torch.Tensor  # float32 [k, 1, H, W] in [0, 1]
    support_y: torch.Tensor  # float32 [k, 1, H, W] in {0, 1}
    query_x: torch.Tensor
    query_y: torch.Tensor
    manifest: EpisodeManifest


def sample_episode(data, line: CellLine | str, split: str, k: int, q: int, crop: int | None, seed: int, index: int) -> Episode:
    """Draw episode ``index`` of the stream ``seed`` (see the module doc for the rule)."""
    line = cell_line(line)
    if k < 1 or q < 1:
        raise ValueError(f"an episode needs k >= 1 support and q >= 1 query images (got k={k}, q={q})")
    if crop is not None and crop < 1:
        raise ValueError(f"crop must be a positive size in pixels or None for whole images (got {crop})")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0 (got seed={seed}, index={index})")
    images = data.images(line, split)
    if k + q > len(images):
        return sample_small_episode(data, line, split, k, q, crop, seed, index)
    stream = zlib.crc32(f"{line.name}|{split}|{q}|{crop}".encode())  # no k: see the module doc
    order = np.random.default_rng([seed, index, stream]).permutation(len(images))
    chosen = [images[i] for i in order[: q + k]]  # queries first, then support
    picks = []
    for position, info in enumerate(chosen):
        if crop is None:
            picks.append((info.id, (0, 0, info.height, info.width)))
            continue
        if crop > info.height or crop > info.width:
            raise ValueError(f"crop {crop} is larger than {info.file_name} ({info.width}x{info.height})")
        picks.append((info.id, _draw_box(np.random.default_rng([seed, index, stream, position]), data.mask(info), crop)))
    manifest = EpisodeManifest(line.name, split, k, q, crop, seed, index, tuple(picks[q:]), tuple(picks[:q]))
    return _materialise(data, manifest, {info.id: info for info in chosen})


def sample_small_episode(data, line: CellLine | str, split: str, k: int, q: int, crop: int | None, seed: int, index: int) -> Episode:
    """Episode ``index`` of a line with fewer images than k + q (a user's own few images): crops share images.

    The n >= 2 images are shuffled; the first s = min(k, n - 1) are support images, the others query images, so
    no image serves both. The k support crops go round-robin over the support images, the q query crops over the
    query images, each at its own position (drawn as in :func:`sample_episode`; crops of one image may overlap).
    With whole images (crop None) a query image appears once: the episode has min(q, n - s) queries, and the
    support images are repeated round-robin to k. One image cannot give disjoint support and query: an error.
    """
    line = cell_line(line)
    images = data.images(line, split)
    if len(images) < 2:
        raise DataError(
            f"{data.root}: {line.name} has {len(images)} {split} image; an episode needs at least two (one for support, "
            "one for queries, so that no image is both)"
        )
    stream = zlib.crc32(f"{line.name}|{split}|{k}|{q}|{crop}|small".encode())
    rng = np.random.default_rng([seed, index, stream])
    order = [images[i] for i in rng.permutation(len(images))]
    s = min(k, len(images) - 1)
    support, query = order[:s], order[s:]
    if crop is None:
        query = query[:q]
    picks = []
    for count, pool in ((k, support), (len(query) if crop is None else q, query)):
        for j in range(count):
            info = pool[j % len(pool)]
            if crop is None:
                picks.append((info.id, (0, 0, info.height, info.width)))
            elif crop > info.height or crop > info.width:
                raise ValueError(f"crop {crop} is larger than {info.file_name} ({info.width}x{info.height})")
            else:
                picks.append((info.id, _draw_box(rng, data.mask(info), crop)))
    manifest = EpisodeManifest(line.name, split, k, len(picks) - k, crop, seed, index, tuple(picks[:k]), tuple(picks[k:]))
    return _materialise(data, manifest, {info.id: info for info in images})


def load_episode(data, manifest: EpisodeManifest) -> Episode:
    """The episode a manifest describes, read from ``data``."""
    by_id = {info.id: info for info in data.images(manifest.line, manifest.split)}
    for image_id, (top, left, height, width) in manifest.support + manifest.query:
        if image_id not in by_id:
            raise DataError(f"{data.root}: manifest image {image_id} is not among the {manifest.split} images of {manifest.line}")
        info = by_id[image_id]
        if top < 0 or left < 0 or height < 1 or width < 1 or top + height > info.height or left + width > info.width:
            raise ValueError(f"manifest box {(top, left, height, width)} does not fit {info.file_name} ({info.width}x{info.height})")
    return _materialise(data, manifest, by_id)


def stack_episodes(episodes: Sequence[Episode]) -> TaskBatch:
    """T episodes of equal shape as one :class:`TaskBatch` ([T, k, 1, H, W] and [T, q, 1, H, W])."""
    if not episodes:
        raise ValueError("stack_episodes needs at least one episode")
    shapes = {(e.support_x.shape, e.query_x.shape) for e in episodes}
    if len(shapes) > 1:
        raise ValueError(f"episodes differ in shape and cannot be stacked: {sorted(tuple(map(tuple, s)) for s in shapes)}")
    return TaskBatch(*(torch.stack([getattr(e, name) for e in episodes]) for name in ("support_x", "support_y", "query_x", "query_y")))


def _draw_box(rng: np.random.Generator, mask: np.ndarray, crop: int) -> Box:
    height, width = mask.shape
    need = MIN_FOREGROUND * crop * crop
    best, best_cover = None, -1
    for _ in range(MAX_DRAWS):
        top, left = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
        cover = int(np.count_nonzero(mask[top : top + crop, left : left + crop]))
        if cover > best_cover:
            best, best_cover = (top, left, crop, crop), cover
        if cover >= need:
            break
    return best


def _materialise(data, manifest: EpisodeManifest, by_id: dict) -> Episode:
    def tensors(items):
        images, masks = [], []
        for image_id, (top, left, height, width) in items:
            info = by_id[image_id]
            images.append(data.image(info)[top : top + height, left : left + width])
            masks.append(data.mask(info)[top : top + height, left : left + width])
        try:
            x, y = np.stack(images), np.stack(masks)
        except ValueError:
            raise ValueError(f"the images of a {manifest.line} episode differ in size; use a crop size") from None
        x = torch.from_numpy(x).unsqueeze(1).float().div_(255.0)
        return x, torch.from_numpy(y).unsqueeze(1).float()

    support_x, support_y = tensors(manifest.support)
    query_x, query_y = tensors(manifest.query)
    return Episode(support_x, support_y, query_x, query_y, manifest)
