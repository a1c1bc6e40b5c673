"""Phase-contrast rendering of outlined cells into an 8-bit image that looks like a LIVECell crop.

Real LIVECell cells are about as bright on average as the flat background (both near 128): they stand out by
texture, a dark line just inside the outline and a bright halo around it. The image is composed additively from
whole-image fields indexed by the instance map (numpy, no per-pixel Python), then shifted so its median is 128.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from tasks.synth.shapes import Cell
from tasks.synth.styles import Style

BACKGROUND_NOISE = 1.5  # grey levels: camera noise on the flat background
BACKGROUND_DRIFT = 1.5  # grey levels: slow illumination drift across the field
MEDIAN = 128


def rasterise(cells: list[Cell], width: int, height: int) -> np.ndarray:
    """Instance labels int32 [H, W] (cell i -> i + 1; a later cell wins where outlines overlap), with pycocotools'
    polygon rasteriser, run on each cell's bounding box."""
    labels = np.zeros((height, width), np.int32)
    for i, cell in enumerate(cells):
        x0, y0 = np.floor(cell.polygon.min(0)).astype(int)
        x1, y1 = np.minimum(np.ceil(cell.polygon.max(0)).astype(int) + 1, (width, height))
        local = (cell.polygon - (x0, y0)).ravel().tolist()
        rle = mask_utils.frPyObjects([local], int(y1 - y0), int(x1 - x0))
        inside = mask_utils.decode(rle)[:, :, 0].astype(bool)
        labels[y0:y1, x0:x1][inside] = i + 1
    return labels


def _band_noise(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """Unit-variance band-pass noise with grain size `scale` px (difference of Gaussians of white noise)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    band = ndimage.gaussian_filter(white, scale) - ndimage.gaussian_filter(white, 2.5 * scale)
    return band / band.std()


def _flat_weights(rng: np.random.Generator, style: Style, cells: list[Cell], lab, yy, xx) -> np.ndarray:
    """Texture weights in [0, 1] at cell pixels (yy, xx) with labels `lab`: ~0 on a share `style.faint` of them.

    Flat parts come in smooth patches of size ~`style.patch_scale` px and, by `style.centred`, towards the cell's
    rim, so texture gathers around the nucleus while the spread periphery stays flat, as in real flat cells.
    """
    field = ndimage.gaussian_filter(rng.standard_normal((yy.max() + 1, xx.max() + 1), dtype=np.float32), style.patch_scale)
    field = field[yy, xx] / field.std()
    centre = np.array([(0.0, 0.0)] + [c.centre for c in cells])
    radius = np.r_[1.0, [c.radius for c in cells]]
    rim = np.hypot(xx - centre[lab, 0], yy - centre[lab, 1]) / radius[lab]
    score = field - style.centred * rim
    return np.clip((score - np.quantile(score, style.faint)) / 0.8 + 0.5, 0.0, 1.0)


def _drift(rng: np.random.Generator, shape) -> np.ndarray:
    """Slow, separable illumination drift of unit amplitude (knots every ~100 px, linear in between)."""
    rows = np.interp(np.arange(shape[0]), np.linspace(0, shape[0], 7), rng.normal(size=7))
    cols = np.interp(np.arange(shape[1]), np.linspace(0, shape[1], 8), rng.normal(size=8))
    return (rows[:, None] + cols[None, :]) / np.sqrt(2)


def _nuclei(rng: np.random.Generator, style: Style, cells: list[Cell], lab: np.ndarray, yy, xx) -> np.ndarray:
    """Dark nuclear envelope and two nucleoli per cell at pixels (yy, xx) with labels `lab`, through per-cell
    look-up tables (no per-cell loop)."""
    n = len(cells)
    size = np.r_[1.0, [c.radius for c in cells]]
    centre = np.array([(0.0, 0.0)] + [c.centre for c in cells]) + rng.normal(0, 0.15, (n + 1, 2)) * size[:, None]
    radius = 0.38 * size
    squash = rng.uniform(1.0, 1.3, n + 1)
    visible = np.r_[0.0, [0.0 if c.mitotic else style.nucleus for c in cells]]
    spots = centre[:, None, :] + rng.normal(0, 0.35, (n + 1, 2, 2)) * radius[:, None, None]
    dist = np.hypot(xx - centre[lab, 0], (yy - centre[lab, 1]) * squash[lab])
    out = -np.exp(-((dist - radius[lab]) ** 2))
    for s in range(2):
        out -= 1.5 * np.exp(-((xx - spots[lab, s, 0]) ** 2 + (yy - spots[lab, s, 1]) ** 2) / 2.0)
    return visible[lab] * out


def render(rng: np.random.Generator, style: Style, cells: list[Cell], labels: np.ndarray) -> np.ndarray:
    """uint8 [H, W] phase-contrast image of `cells`, whose instance map is `labels` (from :func:`rasterise`)."""
    shape = labels.shape
    inside = labels > 0
    border = np.zeros(shape, bool)  # pixels whose label differs from a 4-neighbour's
    border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    border[1:, :] |= labels[1:, :] != labels[:-1, :]
    border[:-1, :] |= labels[:-1, :] != labels[1:, :]
    depth = ndimage.distance_transform_edt(~(border & inside))  # inside: distance to the own outline
    away = ndimage.distance_transform_edt(~inside)  # outside: distance to the nearest cell

    n = len(cells) + 1  # per-cell look-up tables, row 0 = background
    mitotic = np.array([False] + [c.mitotic for c in cells])
    texture = np.r_[0.0, style.texture * rng.lognormal(0.0, 0.25, n - 1)]
    interior = np.r_[0.0, style.interior + rng.normal(0.0, 2.0, n - 1)]
    interior[mitotic] = 20.0
    texture[mitotic] *= 0.5

    image = MEDIAN + BACKGROUND_NOISE * rng.standard_normal(shape, dtype=np.float32)
    image += BACKGROUND_DRIFT * _drift(rng, shape).astype(np.float32)
    grain = _band_noise(rng, shape, style.texture_scale)
    dots = ndimage.gaussian_filter((rng.random(shape) < style.granules / 100).astype(np.float32), 0.8) * 12.0

    yy, xx = np.nonzero(inside)  # cells: texture, granules, interior offset, dark inner line, inner halo, nucleus
    lab, d = labels[yy, xx], depth[yy, xx]
    dark_line_at = 3.0 if style.inner_halo else 0.5
    textured = texture[lab] * (grain[yy, xx] - style.granules * dots[yy, xx])
    if style.faint:
        textured *= _flat_weights(rng, style, cells, lab, yy, xx)
    cell_term = (
        textured
        + interior[lab]
        - style.edge * np.exp(-(((d - dark_line_at) / 1.2) ** 2))
        + style.inner_halo * np.exp(-d / 1.5)
    )
    if style.nucleus:
        cell_term += _nuclei(rng, style, cells, lab, yy, xx)
    if len(cell_term):  # texture, edges and granules darken on average: restore the intended mean offset
        cell_term += style.interior - cell_term.mean()
    image[yy, xx] += cell_term
    near = (away > 0) & (away < 1 + 6 * style.halo_width)  # background next to cells: bright halo
    image[near] += style.halo * np.exp(-(away[near] - 1.0) / style.halo_width)
    image -= np.median(image) - MEDIAN
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
