"""Cell instances from a binary mask, and instance AP against annotated cells with pycocotools' ``COCOeval``.

A binary mask says how much of an image is cell, not how many cells there are, which is what biologists
count. :func:`instances` turns a mask into labelled cells: connected components, each split where a
distance-transform watershed finds several cell centres (touching cells form one component). It needs
scipy and numpy only (the flooding is :func:`flood`; scikit-image is not needed).

The split, and its parameters (:data:`INSTANCE_DEFAULTS`, keyword arguments of :func:`instances`):

* the Euclidean distance of every cell pixel to the background, smoothed with a Gaussian of ``sigma``
  pixels so that a ragged outline does not create spurious centres (0 = no smoothing);
* cell centres: pixels whose smoothed distance is the maximum within ``min_distance`` pixels (a square
  window of side 2 * min_distance + 1) and at least ``min_radius``; centres no more than ``min_distance``
  apart (in x and in y) are one centre, so two cells whose centres lie that close stay one cell;
* a watershed of the inverted distance from the centres, confined to each connected component;
* instances with fewer than ``min_size`` pixels are dropped (the reader drops annotated cells below
  ``tasks.mask_cache.MIN_CELL_PIXELS`` too).

``split=False`` keeps connected components only. Defaults were chosen from cell sizes (LIVECell cells are
about 10-40 pixels across at its resolution), not tuned on any test image.

Scoring (:func:`instance_ap`) is COCO's segmentation AP, computed by pycocotools itself: AP@0.5 and AP
averaged over IoU thresholds 0.50:0.05:0.95, over all cell sizes, with every predicted instance kept
(COCO's default of at most 100 detections an image would cut LIVECell's dense images short). Each
predicted instance's confidence is the mean foreground probability of its pixels.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

INSTANCE_DEFAULTS = {"split": True, "min_distance": 4, "sigma": 1.0, "min_radius": 1.0, "min_size": 10}
CATEGORY = {"id": 1, "name": "cell", "supercategory": "cell"}
_LEVELS = 200  # the flooding's water levels: the distance map, quantised (finer costs time, not accuracy)
_CROSS = ndimage.generate_binary_structure(2, 1)


def instances(
    mask: np.ndarray,
    *,
    split: bool = INSTANCE_DEFAULTS["split"],
    min_distance: int = INSTANCE_DEFAULTS["min_distance"],
    sigma: float = INSTANCE_DEFAULTS["sigma"],
    min_radius: float = INSTANCE_DEFAULTS["min_radius"],
    min_size: int = INSTANCE_DEFAULTS["min_size"],
) -> np.ndarray:
    """int32 [H, W] instance labels 1..N (0 = background) of a boolean [H, W] mask (rules in the module doc)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"instances needs a 2-D mask, got shape {mask.shape}")
    if min_distance < 1 or sigma < 0 or min_size < 1:
        raise ValueError(f"need min_distance >= 1, sigma >= 0 and min_size >= 1 (got {min_distance}, {sigma}, {min_size})")
    components, count = ndimage.label(mask)
    labels = components
    if split and count:
        labels = _split(mask, components, min_distance, sigma, min_radius)
    return _drop_small(labels, min_size)


def _split(mask: np.ndarray, components: np.ndarray, min_distance: int, sigma: float, min_radius: float) -> np.ndarray:
    distance = ndimage.distance_transform_edt(mask)
    if sigma > 0:
        distance = ndimage.gaussian_filter(distance, sigma) * mask
    peaks = mask & (distance >= min_radius) & (distance == ndimage.maximum_filter(distance, size=2 * min_distance + 1))
    near, _ = ndimage.label(ndimage.binary_dilation(peaks, np.ones((min_distance, min_distance), dtype=bool)), np.ones((3, 3)))
    markers = np.where(peaks, near, 0)  # centres within min_distance of each other (chessboard) are one
    levels = np.zeros(mask.shape, dtype=np.int64)
    top = float(distance.max()) or 1.0
    levels[mask] = np.round((1 - distance[mask] / top) * _LEVELS)
    basins = flood(levels, markers, mask)
    # A basin never spans two components: pair (component, basin) and number the pairs. A component without a
    # centre of its own (its maximum lay within min_distance of a larger one across the background) keeps its
    # own label through the pairing too.
    pairs = components.astype(np.int64) * (int(basins.max()) + 1) + np.where(mask, basins, 0)
    _, labels = np.unique(np.where(mask, pairs, 0), return_inverse=True)
    return labels.reshape(mask.shape).astype(np.int32)


def flood(levels: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Marker-controlled watershed by flooding: int labels [H, W] of the markers (> 0) grown over ``mask``.

    The water rises one level at a time; at each, every basin grows breadth-first (4-connected, one ring of
    pixels a pass, so two basins meet halfway; a pixel reached by two in the same pass goes to the one listed
    first) into the unlabelled mask pixels at or below the level. Mask pixels no marker reaches stay 0.
    (``scipy.ndimage.watershed_ift`` is not this: on a ramp between two markers it gives most of the ramp to
    one of them.)
    """
    height, width = mask.shape
    pad = lambda a, fill: np.pad(a, 1, constant_values=fill).ravel()  # noqa: E731  a border: no bounds checks
    inside = pad(mask, False)
    level_of = np.where(inside, pad(levels, 0), np.iinfo(np.int64).max)
    labels = pad(np.where(mask, markers, 0), 0).astype(np.int64)
    steps = np.array([-1, 1, -(width + 2), width + 2])
    waiting = np.flatnonzero(labels)  # labelled pixels that may border unlabelled mask pixels
    for level in np.unique(levels[mask]):
        front, blocked = waiting, []
        while len(front):
            source = np.repeat(front, len(steps))
            target = (front[:, None] + steps).ravel()
            free = inside[target] & (labels[target] == 0)
            blocked.append(source[free & (level_of[target] > level)])
            source, target = source[free & (level_of[target] <= level)], target[free & (level_of[target] <= level)]
            target, first = np.unique(target, return_index=True)
            labels[target] = labels[source[first]]
            front = target
        waiting = np.unique(np.concatenate(blocked)) if blocked else waiting[:0]
    return labels.reshape(height + 2, width + 2)[1:-1, 1:-1]


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    number = np.zeros(len(sizes), dtype=np.int32)
    number[keep] = np.arange(1, int(keep.sum()) + 1)
    return number[labels]


def instance_scores(labels: np.ndarray, probability: np.ndarray | None) -> np.ndarray:
    """float64 [N]: each instance's mean foreground probability (all 1 without probabilities)."""
    count = int(labels.max())
    if probability is None:
        return np.ones(count)
    sums = np.bincount(labels.ravel(), weights=np.asarray(probability, dtype=np.float64).ravel(), minlength=count + 1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    return sums[1:] / np.maximum(sizes[1:], 1)


def encode(labels: np.ndarray) -> list[dict]:
    """COCO run-length encodings (JSON-ready: counts as text) of instances 1..N, in label order."""
    out = []
    for label in range(1, int(labels.max()) + 1):
        rle = mask_utils.encode(np.asfortranarray(labels == label, dtype=np.uint8))
        out.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return out


def annotations(labels: np.ndarray, image_id: int, first_id: int = 1, scores: np.ndarray | None = None) -> list[dict]:
    """COCO annotations (RLE segmentation, area, bbox; a score where given) of the instances in ``labels``."""
    out = []
    for n, rle in enumerate(encode(labels)):
        coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        ann = {
            "id": first_id + n, "image_id": int(image_id), "category_id": CATEGORY["id"], "segmentation": rle,
            "area": float(mask_utils.area(coded)), "bbox": [float(v) for v in mask_utils.toBbox(coded)], "iscrowd": 0,
        }
        if scores is not None:
            ann["score"] = float(scores[n])
        out.append(ann)
    return out


def instance_ap(predicted: Sequence[tuple[np.ndarray, np.ndarray]], truth: Sequence[np.ndarray]) -> dict[str, float]:
    """COCO segmentation AP of predicted instances against annotated ones, over a set of images.

    ``predicted[i]`` is (int labels [H, W], scores [N]) of image i, ``truth[i]`` its annotated int labels [H, W].
    Returns ``{"ap50": AP@0.5, "ap": AP@[.5:.95]}``; NaN where no image has an annotated cell.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} annotated images")
    images, gt, dt = [], [], []
    for i, ((labels, scores), true) in enumerate(zip(predicted, truth)):
        if labels.shape != true.shape:
            raise ValueError(f"image {i}: prediction {labels.shape} and annotation {true.shape} differ in size")
        images.append({"id": i + 1, "height": int(true.shape[0]), "width": int(true.shape[1])})
        gt += annotations(true, i + 1, first_id=len(gt) + 1)
        dt += annotations(labels, i + 1, first_id=len(dt) + 1, scores=np.asarray(scores))
    if not gt:
        return {"ap50": float("nan"), "ap": float("nan")}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt, coco_dt = _coco(images, gt), _coco(images, dt)
        evaluation = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluation.params.maxDets = [max(len(dt), 1)]
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, 0, 0, 0]  # [IoU threshold, recall level]; -1 = no annotated cell
    return {"ap50": float(precision[0].mean()), "ap": float(precision.mean())}


def _coco(images: list[dict], anns: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [CATEGORY]}
    coco.createIndex()
    return coco
