"""Cell outlines: where cells sit in an image and the polygon that traces each one.

A cell is a star-shaped body (an ellipse with low-order lobes and a hand-traced wobble) clipped against its
neighbours along power bisectors, so packed clusters become polygonal cobblestones while lone cells stay round;
thin processes (neurites, filopodia; optionally forked) are added after clipping and may cross neighbours, as in
LIVECell, whose annotations overlap now and then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from tasks.morphology import polygon_area
from tasks.synth.styles import Style

GAP = 0.6  # px kept free between the bodies of touching cells
MIN_AREA = 20.0  # px: smaller (mostly border-clipped) outlines are not annotated
MIN_VISIBLE = 0.3  # a cell cut by the image border is kept when this fraction of it is inside


@dataclass(frozen=True)
class Cell:
    polygon: np.ndarray  # float [N, 2] (x, y), unclosed, rounded to 0.01 px as in LIVECell's JSON
    centre: tuple[float, float]
    radius: float  # radius of a disc with the body's area before clipping
    mitotic: bool


def cell_count(rng: np.random.Generator, style: Style, progress: float) -> int:
    """Cells in an image at `progress` (0 = first timepoint, 1 = last): geometric growth with 15 % scatter."""
    low, high = style.cells
    n = low * (high / low) ** progress * rng.lognormal(0.0, 0.15)
    return int(np.clip(round(n), low, high))


def _radii(rng: np.random.Generator, style: Style, n: int) -> tuple[np.ndarray, np.ndarray]:
    mitotic = rng.random(n) < style.mitotic
    area = style.area * rng.lognormal(0.0, style.area_sigma, n)
    area[mitotic] *= 0.35
    return np.sqrt(area / np.pi), mitotic


def _place(rng: np.random.Generator, style: Style, radii: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centres grown cluster by cluster: a cell buds off a random placed cell, or seeds a new cluster.

    Each cell gets `style.tries` candidate spots (drawn up front); the first one no closer than 0.9 * spacing * (r_i + r_j) to
    any placed cell wins, else the cell is dropped, so a crowded image saturates into confluence instead of piling
    cells up. Dropped cells' rows are NaN.
    """
    n, tries = len(radii), style.tries
    lo = -0.5 * radii.max()
    new = rng.random((n, tries)) < style.p_new_cluster
    anywhere = rng.uniform((lo, lo), (width - lo, height - lo), (n, tries, 2))
    parent = rng.random((n, tries))
    angle = rng.uniform(0, 2 * np.pi, (n, tries))
    reach = style.spacing * rng.uniform(0.97, 1.12, (n, tries))
    step = np.stack([np.cos(angle), np.sin(angle)], -1)
    centres = np.full((n, 2), np.nan)
    placed = np.empty(n, int)
    m = 0
    for i in range(n):
        if m == 0:
            candidates = anywhere[i]
        else:
            j = placed[(parent[i] * m).astype(int)]
            budded = centres[j] + (reach[i] * (radii[i] + radii[j]))[:, None] * step[i]
            candidates = np.where(new[i][:, None], anywhere[i], budded)
            k = placed[:m]
            d2 = ((candidates[:, None, :] - centres[k][None, :, :]) ** 2).sum(-1)
            ok = (d2 >= (0.9 * style.spacing * (radii[k] + radii[i])) ** 2).all(1)
            ok &= ((candidates >= lo) & (candidates <= (width - lo, height - lo))).all(1)
            if not ok.any():
                continue
            candidates = candidates[np.argmax(ok):]
        centres[i] = candidates[0]
        placed[m] = i
        m += 1
    return centres


def _bodies(rng: np.random.Generator, style: Style, radii: np.ndarray, mitotic: np.ndarray, n_vertices: int):
    """Angles and radii [n, V] of star-shaped bodies of area ~ pi * radius^2 (mitotic ones round)."""
    n = len(radii)
    theta = np.sort((rng.uniform(0, 2 * np.pi, (n, 1)) + np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)) % (2 * np.pi), 1)
    aspect = np.where(mitotic, 1.0, np.maximum(1.0, style.aspect * rng.lognormal(0.0, 0.2, n)))[:, None]
    roughness = np.where(mitotic, 0.0, style.roughness)[:, None, None]
    a, b = radii[:, None] * np.sqrt(aspect), radii[:, None] / np.sqrt(aspect)
    phi = rng.uniform(0, np.pi, (n, 1))
    r = a * b / np.hypot(b * np.cos(theta - phi), a * np.sin(theta - phi))
    k = np.arange(2, 6)[None, :, None]
    lobes = roughness * rng.normal(size=(n, 4, 1)) / np.sqrt(k) * np.cos(k * theta[:, None, :] + rng.uniform(0, 2 * np.pi, (n, 4, 1)))
    r = r * np.clip(1.0 + lobes.sum(1), 0.5, 1.6)
    return theta, r * (1.0 + style.jitter * rng.normal(size=r.shape))


def _clip_to_neighbours(theta, r, centres, radii, neighbours, fill):
    """Shorten rays that cross the power bisector towards a neighbour (split at the radii's ratio), and lengthen
    rays that end short of it by less than a factor `fill` [n] up to it, so that packed cells close the gaps
    between them (flat cells spreading into a confluent sheet; `fill` = 1 only clips).

    `neighbours` [n, K] indexes `centres`; index n (cKDTree's "none") marks a missing neighbour.
    """
    n = len(radii)
    valid = neighbours < n
    safe = np.where(valid, neighbours, 0)
    delta = centres[safe] - centres[:, None, :]
    dist = np.hypot(delta[..., 0], delta[..., 1])
    share = np.where(valid, dist * radii[:, None] / (radii[:, None] + radii[safe]) - GAP / 2, np.inf)
    cos = np.cos(theta[:, :, None] - np.arctan2(delta[..., 1], delta[..., 0])[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where(cos > 1e-6, share[:, None, :] / cos, np.inf)
    reach = limit.min(2)
    return np.maximum(np.where(reach < fill[:, None] * r, reach, r), 0.15 * radii[:, None])


def _with_spikes(rng: np.random.Generator, style: Style, theta, r, radius):
    """Insert thin tapering processes (optionally forked) into the outline, in outline order.

    Each process replaces the body vertices over its base and is a polyline of (angle, radius) points; processes
    closer than their own angular footprint to an earlier one are skipped so the outline stays simple.
    """
    n_spikes = rng.poisson(style.spikes)
    keys, angles, radii = list(theta), list(theta), list(r)
    taken: list[tuple[float, float]] = []
    for _ in range(n_spikes):
        at = rng.uniform(0, 2 * np.pi)
        base = float(np.interp(at, theta, r, period=2 * np.pi))
        length = radius * rng.uniform(*style.spike_length)
        half = style.spike_width / max(base, 1.0)
        fork = rng.random() < style.spike_branch
        spread = 0.35 if fork else half  # angular reach of the tips
        if any(abs((at - c + np.pi) % (2 * np.pi) - np.pi) < spread + s + 0.1 for c, s in taken):
            continue
        taken.append((at, spread))
        if fork:
            split = base + 0.45 * length
            arm = style.spike_width * 0.5 / split
            group = [
                (at - half, base), (at - arm, split), (at - spread, base + length * rng.uniform(0.8, 1.1)),
                (at, split + 2.0), (at + spread, base + length * rng.uniform(0.6, 1.0)), (at + arm, split),
                (at + half, base),
            ]
        else:
            group = [(at - half, base), (at + rng.normal(0, 0.3 * half), base + length), (at + half, base)]
        covered = [i for i, k in enumerate(keys) if abs((k - at + np.pi) % (2 * np.pi) - np.pi) <= half]
        for i in reversed(covered):
            del keys[i], angles[i], radii[i]
        for key, (angle, rad) in zip(np.linspace(at - half, at + half, len(group)), group):
            keys.append(key)
            angles.append(angle)
            radii.append(rad)
    order = np.argsort(np.asarray(keys) % (2 * np.pi), kind="stable")
    return np.asarray(angles)[order], np.asarray(radii)[order]


def cells_for_image(rng: np.random.Generator, style: Style, n: int, width: int, height: int) -> list[Cell]:
    """`n` candidate cells placed, outlined and clipped to the image; fewer come back where the image is full."""
    radii, mitotic = _radii(rng, style, n)
    centres = _place(rng, style, radii, width, height)
    kept = np.flatnonzero(~np.isnan(centres[:, 0]))
    centres, radii, mitotic = centres[kept], radii[kept], mitotic[kept]
    n_vertices = int(np.clip(2 * np.pi * np.sqrt(style.area / np.pi) / 2.5, 16, 64))
    theta, r = _bodies(rng, style, radii, mitotic, n_vertices)
    k = min(9, len(radii))
    neighbours = cKDTree(centres).query(centres, k, distance_upper_bound=4 * radii.max() * style.aspect)[1]
    fill = np.where(mitotic, 1.0, style.fill)
    clipped = _clip_to_neighbours(theta, r, centres, radii, neighbours.reshape(len(radii), k)[:, 1:], fill)
    r = np.where(mitotic[:, None], r, clipped)  # mitotic cells round up on top of their neighbours: never clipped
    cells = []
    for i, (centre, radius) in enumerate(zip(centres, radii)):
        t, rad = theta[i], r[i]
        if style.spikes and not mitotic[i]:
            t, rad = _with_spikes(rng, style, t, rad, radius)
        full = np.stack([centre[0] + rad * np.cos(t), centre[1] + rad * np.sin(t)], 1)
        polygon = np.round(np.clip(full, 0, (width, height)), 2)
        if not np.array_equal(polygon, np.round(full, 2)):  # clamped at the border: drop repeated vertices
            polygon = polygon[np.any(polygon != np.roll(polygon, 1, 0), axis=1)]
        area = polygon_area(polygon) if len(polygon) >= 3 else 0.0
        if area < MIN_AREA or area < MIN_VISIBLE * polygon_area(full):
            continue
        cells.append(Cell(polygon, (float(centre[0]), float(centre[1])), float(radius), bool(mitotic[i])))
    return cells
