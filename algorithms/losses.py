"""Training losses on logits and the evaluation metric (foreground IoU), all per image then
averaged, written with shape-only control flow so they run under ``vmap`` and ``grad``."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

DICE_SMOOTH = 1.0
"""Added to the numerator and denominator of every image's soft Dice: keeps the loss finite and
smooth for an image without foreground, where a prediction of all background then scores Dice ~1."""


def _check(logits: Tensor, masks: Tensor, what: str) -> None:
    if logits.dim() != 4 or logits.shape[1] != 1 or logits.shape != masks.shape:
        raise ValueError(
            f"{what}: expected logits and masks of the same shape [B, 1, H, W], "
            f"got {list(logits.shape)} and {list(masks.shape)}"
        )


def dice_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """1 - mean over images of soft Dice (2 sum(p y) + s) / (sum(p) + sum(y) + s), p = sigmoid(logits),
    s = ``DICE_SMOOTH``."""
    _check(logits, masks, "dice loss")
    probs = torch.sigmoid(logits)
    overlap = (probs * masks).sum(dim=(1, 2, 3))
    total = probs.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3))
    dice = (2 * overlap + DICE_SMOOTH) / (total + DICE_SMOOTH)
    return 1 - dice.mean()


def bce_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Binary cross-entropy with logits, mean over pixels (= mean over images of each image's mean)."""
    _check(logits, masks, "bce loss")
    return F.binary_cross_entropy_with_logits(logits, masks)


def bce_dice_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """BCE + Dice, unweighted sum."""
    return bce_loss(logits, masks) + dice_loss(logits, masks)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "dice": dice_loss,
    "bce": bce_loss,
    "bce_dice": bce_dice_loss,
}


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None


def iou(logits: Tensor, masks: Tensor) -> Tensor:
    """Per-image foreground IoU (Jaccard) of the prediction sigmoid(logits) > 0.5 (i.e. logits > 0)
    against masks > 0.5; shape [B]. An image where truth and prediction are both empty scores 1:
    predicting no cells where there are none is a perfect answer."""
    _check(logits, masks, "iou")
    pred = logits > 0
    truth = masks > 0.5
    inter = (pred & truth).sum(dim=(1, 2, 3)).float()
    union = (pred | truth).sum(dim=(1, 2, 3)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
