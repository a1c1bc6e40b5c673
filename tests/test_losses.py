"""Losses against values worked out by hand, IoU against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from algorithms.losses import DICE_SMOOTH, LOSSES, get_loss, iou


def _logit(p):
    return math.log(p / (1 - p))


# two 1x2x2 images, probabilities chosen by hand
PROBS = [[[0.8, 0.2], [0.5, 0.5]], [[0.1, 0.1], [0.1, 0.9]]]
MASKS = [[[1, 0], [1, 0]], [[0, 0], [0, 0]]]
LOGITS = torch.tensor([[[[_logit(p) for p in row] for row in image]] for image in PROBS])
TARGETS = torch.tensor([[image] for image in MASKS], dtype=torch.float32)


def test_dice_by_hand():
    assert DICE_SMOOTH == 1.0
    # image 0: overlap 0.8 + 0.5 = 1.3, sum p 2.0, sum y 2 -> (2.6 + 1) / (4 + 1) = 0.72
    # image 1: overlap 0, sum p 1.2, sum y 0 -> 1 / 2.2
    expected = 1 - (0.72 + 1 / 2.2) / 2
    assert LOSSES["dice"](LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_bce_and_bce_dice_by_hand():
    terms = []
    for image, mask in zip(PROBS, MASKS):
        for prow, yrow in zip(image, mask):
            for p, y in zip(prow, yrow):
                terms.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    bce = sum(terms) / len(terms)
    assert LOSSES["bce"](LOGITS, TARGETS).item() == pytest.approx(bce, rel=1e-6)
    dice = 1 - (0.72 + 1 / 2.2) / 2
    assert LOSSES["bce_dice"](LOGITS, TARGETS).item() == pytest.approx(bce + dice, rel=1e-6)


def test_dice_is_near_zero_for_a_confident_right_answer_and_differentiable_on_empty_masks():
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:5, 3:6] = 1
    logits = 20 * (2 * masks - 1)
    assert LOSSES["dice"](logits, masks).item() < 1e-6
    g = grad(LOSSES["dice"])(torch.zeros(2, 1, 8, 8), masks)
    assert torch.isfinite(g).all() and g[1].abs().sum() > 0


def test_get_loss_and_bad_shapes():
    assert get_loss("bce_dice") is LOSSES["bce_dice"]
    with pytest.raises(ValueError, match="valid: dice, bce, bce_dice"):
        get_loss("focal")
    for name, fn in [*LOSSES.items(), ("iou", iou)]:
        with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
            fn(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
        with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
            fn(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))


def _numpy_iou(logits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = []
    for lg, m in zip(logits, masks):
        pred = 1 / (1 + np.exp(-lg.astype(np.float64))) > 0.5
        truth = m > 0.5
        union = np.logical_or(pred, truth).sum()
        out.append(1.0 if union == 0 else np.logical_and(pred, truth).sum() / union)
    return np.array(out)


def test_iou_against_numpy_including_the_empty_cases():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 1, 9, 11)).astype(np.float32)
    masks = (rng.random((6, 1, 9, 11)) > 0.6).astype(np.float32)
    logits[3] = -1.0  # empty prediction, empty truth -> 1 by the documented rule
    masks[3] = 0
    logits[4] = 2.0  # full prediction, empty truth -> 0
    masks[4] = 0
    logits[5] = -2.0  # empty prediction, some truth -> 0
    got = iou(torch.from_numpy(logits), torch.from_numpy(masks))
    assert got.shape == (6,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _numpy_iou(logits, masks), rtol=1e-6)
    assert got[3].item() == 1.0 and got[4].item() == 0.0 and got[5].item() == 0.0
    assert 0 < got[0].item() < 1


def test_iou_threshold_is_strict():
    """sigmoid(0) = 0.5 is not foreground."""
    logits = torch.tensor([[[[0.0, 1e-4]]]])
    masks = torch.tensor([[[[1.0, 1.0]]]])
    assert iou(logits, masks).item() == pytest.approx(0.5)


def test_losses_and_iou_under_vmap_equal_a_loop():
    logits, masks = torch.randn(3, 2, 1, 5, 5), (torch.rand(3, 2, 1, 5, 5) > 0.5).float()
    for fn in [*LOSSES.values(), iou]:
        torch.testing.assert_close(vmap(fn)(logits, masks), torch.stack([fn(lg, m) for lg, m in zip(logits, masks)]))
