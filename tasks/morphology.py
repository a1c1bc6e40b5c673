"""Morphology and appearance statistics of a LIVECell-format dataset (real or synthetic), behind ``data info``.

Per cell (from its annotated polygon, vertices (x, y), unclosed):
  area         shoelace area of the polygon (px^2), the same number LIVECell stores as ``area``;
  solidity     area / area of the polygon's convex hull (1 for convex cells, lower with processes and lobes);
  circularity  4 pi area / perimeter^2, perimeter = length of the closed polygon (1 for a disc, ~0.9 for a hexagon).
Per image:
  cover fraction    share of pixels inside any cell (the foreground mask);
  median intensity  median grey level of the 8-bit image (LIVECell images are normalised to about 128).
And the classical baselines that say how hard the foreground is to find without learning (foreground IoU of an
Otsu threshold of the raw image, and of a local-standard-deviation map; see :func:`otsu_ious`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

LOCAL_STD_WINDOW = 9  # px, side of the square window of the local-standard-deviation map
SUMMARY_COLUMNS = [
    "line", "split", "images", "cells", "cells_per_image", "median_area",
    "solidity", "circularity", "cover_fraction", "median_intensity",
]


def polygon_area(polygon: np.ndarray) -> float:
    """Shoelace area of an unclosed polygon [N, 2]."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_perimeter(polygon: np.ndarray) -> float:
    """Length of the closed outline of an unclosed polygon [N, 2]."""
    return float(np.hypot(*(np.roll(polygon, -1, axis=0) - polygon).T).sum())


def solidity(polygon: np.ndarray) -> float:
    """Polygon area / convex-hull area; NaN for a degenerate (flat) polygon."""
    try:
        hull = ConvexHull(polygon).volume  # in 2-D, "volume" is the area
    except QhullError:
        return float("nan")
    return polygon_area(polygon) / hull if hull > 0 else float("nan")


def circularity(polygon: np.ndarray) -> float:
    """4 pi area / perimeter^2 of the polygon; NaN for a zero-length outline."""
    perimeter = polygon_perimeter(polygon)
    return 4 * np.pi * polygon_area(polygon) / perimeter**2 if perimeter > 0 else float("nan")


def cell_table(polygons: list[np.ndarray]) -> pd.DataFrame:
    """One row per cell: area, solidity, circularity."""
    return pd.DataFrame(
        {
            "area": [polygon_area(p) for p in polygons],
            "solidity": [solidity(p) for p in polygons],
            "circularity": [circularity(p) for p in polygons],
        },
        columns=["area", "solidity", "circularity"],
    )


def local_std(image: np.ndarray, window: int = LOCAL_STD_WINDOW) -> np.ndarray:
    """Standard deviation of grey levels in a `window` x `window` box around each pixel (float64 [H, W])."""
    x = image.astype(np.float64)
    mean = ndimage.uniform_filter(x, window)
    return np.sqrt(np.maximum(ndimage.uniform_filter(x * x, window) - mean * mean, 0.0))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of a `bins`-bin histogram maximising the between-class variance.

    Pixels strictly above the returned value form the upper class.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(values, bins=bins)
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)[:-1]
    m0 = np.cumsum(p * centres)[:-1]
    total = m0[-1] + p[-1] * centres[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    return float(edges[1:][np.nanargmax(between)])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def otsu_ious(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Foreground IoU of (Otsu on raw intensity: bright side, Otsu on the local-std map: high side) against `mask`.

    Real LIVECell cells have about the background's mean brightness, so the raw threshold mostly finds halos and
    gives a low IoU; texture (local std) finds cells better. A synthetic set should not be much easier.
    """
    raw = image > otsu_threshold(image)
    std = local_std(image)
    return _iou(raw, mask), _iou(std > otsu_threshold(std), mask)


def _line_split_images(data, splits):
    for split in splits:
        for line in data.lines(split):
            yield line, split, data.images(line, split)


def summarize(data, splits=("train", "val", "test")) -> pd.DataFrame:
    """One row per cell line x split of `data` (a :class:`tasks.livecell.LiveCell`), lines without images skipped.

    Columns: line (canonical name), split, images, cells (all images), cells_per_image (median over images),
    median_area (median over cells, px), solidity and circularity (medians over cells), cover_fraction (mean over
    images of the foreground share), median_intensity (median over images of each image's median grey level).
    """
    rows = []
    for line, split, infos in _line_split_images(data, splits):
        polygons = [data.polygons(info) for info in infos]
        cells = cell_table([p for image in polygons for p in image])
        rows.append(
            {
                "line": line.name,
                "split": split,
                "images": len(infos),
                "cells": len(cells),
                "cells_per_image": float(np.median([len(p) for p in polygons])),
                "median_area": float(cells["area"].median()),
                "solidity": float(cells["solidity"].median()),
                "circularity": float(cells["circularity"].median()),
                "cover_fraction": float(np.mean([data.mask(info).mean() for info in infos])),
                "median_intensity": float(np.median([np.median(data.image(info)) for info in infos])),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def otsu_baselines(data, splits=("train", "val", "test")) -> pd.DataFrame:
    """One row per cell line x split: mean over images of the two Otsu foreground IoUs of :func:`otsu_ious`."""
    rows = []
    for line, split, infos in _line_split_images(data, splits):
        ious = np.array([otsu_ious(data.image(info), data.mask(info)) for info in infos])
        rows.append({"line": line.name, "split": split, "otsu_iou_raw": ious[:, 0].mean(), "otsu_iou_std": ious[:, 1].mean()})
    return pd.DataFrame(rows, columns=["line", "split", "otsu_iou_raw", "otsu_iou_std"])
