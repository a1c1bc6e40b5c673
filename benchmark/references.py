"""Reference predictors, scored on exactly the episodes every algorithm is scored on.

A meta-learner's IoU means little without what a trivial or classical answer gets on the same crops: an
algorithm that has collapsed to "every pixel is cell" scores exactly the ``all-foreground`` row, and one that
cannot beat a global threshold has learnt nothing a microscope's software does not already do.

- ``all-foreground``: every pixel cell; its IoU is the query crop's cell cover.
- ``otsu``: Otsu's threshold of each query image's intensities (label-free, so computed on the query image
  itself); which side of the threshold is cell (the polarity) is chosen on the support set, never the query.
- ``otsu-texture``: the same on a local standard-deviation map (cells are textured, background is flat),
  window :data:`TEXTURE_WINDOW`, polarity likewise from the support set.
- ``scratch``: the untrained initialisation adapted with the protocol every algorithm is evaluated with; the
  runner produces it (it needs the model).

The classical ones are pure functions of (support images, support masks, query images), shaped like a
TaskBatch's tensors ([E, k or q, 1, H, W]), that return logits (+1 cell, -1 background), so they are
scored by the same code as the models' predictions. The names, the records' vocabulary, live in
:mod:`benchmark.observations`, so the report reads them without loading torch.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.losses import iou
from benchmark.observations import CLASSICAL_REFERENCES

TEXTURE_WINDOW = 5  # pixels; fixed a priori, not tuned (tuning would need validation episodes of its own)


def otsu_threshold(images: Tensor) -> Tensor:
    """Otsu's threshold of each image: ``images`` [B, ...] -> [B].

    Exact over the image's distinct values (for 8-bit images the classical 256-bin histogram method): the
    threshold t maximises the between-class variance w0 w1 (mu0 - mu1)^2 of the split {x <= t} | {x > t};
    the first maximiser on ties. An image with one value has no split; its threshold is that value.
    """
    x = images.flatten(1).double().sort(dim=1).values
    n = x.shape[1]
    below = torch.arange(1, n, device=x.device, dtype=x.dtype)  # pixels in {x <= t} when t = x[:, i - 1]
    sums = x.cumsum(dim=1)[:, :-1]
    mean_low = sums / below
    mean_high = (x.sum(dim=1, keepdim=True) - sums) / (n - below)
    between = below * (n - below) * (mean_low - mean_high) ** 2
    between = torch.where(x[:, 1:] > x[:, :-1], between, -1.0)  # split only between distinct values
    best = between.argmax(dim=1)
    split = between.gather(1, best[:, None])[:, 0] >= 0
    return torch.where(split, x.gather(1, best[:, None])[:, 0], x[:, -1])


def local_std(images: Tensor, window: int = TEXTURE_WINDOW) -> Tensor:
    """Standard deviation of each pixel's ``window`` x ``window`` neighbourhood (clipped at the border):
    ``images`` [..., H, W] -> the same shape, float64."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"local_std: window must be an odd number of pixels >= 1, got {window}")
    shape = images.shape
    x = images.double().reshape(-1, 1, *shape[-2:])
    pool = lambda t: F.avg_pool2d(t, window, stride=1, padding=window // 2, count_include_pad=False)  # noqa: E731
    mean = pool(x)
    return (pool(x * x) - mean * mean).clamp_min(0).sqrt().reshape(shape)


def _as_logits(cell: Tensor) -> Tensor:
    return torch.where(cell, 1.0, -1.0).float()


def _thresholded(support_maps: Tensor, support_y: Tensor, query_maps: Tensor) -> Tensor:
    """Cell = one side of each image's Otsu threshold, the side that scores the higher mean IoU on the
    episode's support images (ties: the bright side)."""
    def cut(maps: Tensor) -> Tensor:
        t = otsu_threshold(maps.flatten(0, 1)).reshape(*maps.shape[:2], 1, 1, 1)
        return maps > t

    bright = cut(support_maps)
    labels = support_y.flatten(0, 1)
    score = lambda cell: iou(_as_logits(cell).flatten(0, 1), labels).reshape(bright.shape[:2]).mean(dim=1)  # noqa: E731
    bright_is_cell = (score(bright) >= score(~bright)).reshape(-1, 1, 1, 1, 1)
    above = cut(query_maps)
    return _as_logits(torch.where(bright_is_cell, above, ~above))


def all_foreground(support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
    """Every query pixel cell."""
    return torch.ones_like(query_x, dtype=torch.float32)


def otsu(support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
    """Otsu on intensities, polarity from the support set."""
    return _thresholded(support_x, support_y, query_x)


def otsu_texture(support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
    """Otsu on the local standard-deviation map, polarity from the support set."""
    return _thresholded(local_std(support_x), support_y, local_std(query_x))


CLASSICAL: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = dict(
    zip(CLASSICAL_REFERENCES, (all_foreground, otsu, otsu_texture), strict=True)
)
