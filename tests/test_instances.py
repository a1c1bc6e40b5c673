"""Instances from masks, and instance AP checked against pycocotools run directly (its own loadRes and summarize)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmark.instances import annotations, instance_ap, instance_scores, instances


def disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_separate_cells_are_components_and_touching_cells_are_split():
    shape = (80, 120)
    apart = disc(shape, (20, 20), 10) | disc(shape, (60, 100), 8)
    assert instances(apart).max() == 2
    touching = disc(shape, (40, 40), 12) | disc(shape, (40, 62), 12)  # overlap: one component, two centres
    assert instances(touching, split=False).max() == 1
    labels = instances(touching)
    assert labels.max() == 2
    assert np.array_equal(labels > 0, touching)
    assert labels[40, 34] != labels[40, 68]  # each centre region in its own cell


def test_centres_closer_than_min_distance_stay_one_cell_and_specks_are_dropped():
    shape = (80, 120)
    touching = disc(shape, (40, 40), 12) | disc(shape, (40, 62), 12)
    assert instances(touching, min_distance=30).max() == 1
    speck = np.zeros(shape, dtype=bool)
    speck[5:7, 5:8] = True  # 6 pixels
    assert instances(speck).max() == 0
    assert instances(speck, min_size=6).max() == 1


def test_bad_masks_and_parameters_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        instances(np.zeros((2, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="min_distance"):
        instances(np.zeros((8, 8), dtype=bool), min_distance=0)
    assert instances(np.zeros((8, 8), dtype=bool)).max() == 0


def squares(shape, corners, side, shift=(0, 0)):
    labels = np.zeros(shape, dtype=np.int32)
    for n, (top, left) in enumerate(corners, start=1):
        labels[top + shift[0] : top + shift[0] + side, left + shift[1] : left + shift[1] + side] = n
    return labels


CORNERS = [(5, 5), (5, 50), (40, 5), (40, 50), (70, 80)]


def test_a_perfect_prediction_has_ap_one():
    truth = [squares((100, 120), CORNERS, 20), instances(disc((64, 64), (30, 30), 15))]
    scores = [instance_scores(t, None) for t in truth]
    assert instance_ap(list(zip(truth, scores)), truth) == {"ap50": 1.0, "ap": 1.0}


def reference_ap(predicted, truth):
    """COCO AP as pycocotools' own pipeline computes it: loadRes of RLE results, evaluate, accumulate, summarize."""
    images, gt, dt = [], [], []
    for i, ((labels, scores), true) in enumerate(zip(predicted, truth), start=1):
        images.append({"id": i, "height": true.shape[0], "width": true.shape[1]})
        for n in range(1, true.max() + 1):
            rle = mask_utils.encode(np.asfortranarray(true == n, dtype=np.uint8))
            gt.append({"id": len(gt) + 1, "image_id": i, "category_id": 1, "segmentation": rle, "iscrowd": 0,
                       "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle))})
        for n in range(1, labels.max() + 1):
            rle = mask_utils.encode(np.asfortranarray(labels == n, dtype=np.uint8))
            dt.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": float(scores[n - 1])})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": gt, "categories": [{"id": 1, "name": "cell"}]}
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(dt), iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"ap": evaluation.stats[0], "ap50": evaluation.stats[1]}


def test_a_shifted_prediction_scores_what_pycocotools_computes():
    # 20-px squares shifted 3 px: IoU (17 * 20) / (2 * 400 - 340) = 0.739, matched at thresholds 0.50..0.70 only
    truth = [squares((100, 120), CORNERS, 20)]
    shifted = squares((100, 120), CORNERS, 20, shift=(0, 3))
    predicted = [(shifted, np.ones(len(CORNERS)))]
    ours = instance_ap(predicted, truth)
    assert ours["ap50"] == pytest.approx(1.0)
    assert ours["ap"] == pytest.approx(0.5)
    assert ours == pytest.approx(reference_ap(predicted, truth), abs=1e-12)


def test_mixed_shifts_scores_and_false_positives_match_pycocotools():
    rng = np.random.default_rng(0)
    truth, predicted = [], []
    for image in range(3):
        true = squares((100, 120), CORNERS, 20)
        pred = np.zeros_like(true)
        for n, (top, left) in enumerate(CORNERS[: 4 - image % 2], start=1):  # a cell missed in some images
            dy, dx = rng.integers(0, 8, size=2)
            pred[top + dy : top + dy + 20, left + dx : left + dx + 20] = n
        pred[90:98, 2:10] = pred.max() + 1  # a false positive
        truth.append(true)
        predicted.append((pred, rng.uniform(0.2, 1.0, size=pred.max())))
    ours = instance_ap(predicted, truth)
    assert 0 < ours["ap"] < ours["ap50"] < 1
    assert ours == pytest.approx(reference_ap(predicted, truth), abs=1e-12)


def test_no_prediction_scores_zero_and_no_annotation_is_undefined():
    truth = [squares((100, 120), CORNERS, 20)]
    empty = np.zeros_like(truth[0])
    assert instance_ap([(empty, np.ones(0))], truth) == {"ap50": 0.0, "ap": 0.0}
    assert np.isnan(instance_ap([(truth[0], np.ones(len(CORNERS)))], [empty])["ap"])


def test_scores_are_mean_probabilities_and_annotations_round_trip():
    labels = squares((40, 40), [(0, 0), (20, 20)], 10)
    probability = np.where(labels == 1, 0.9, 0.6)
    assert instance_scores(labels, probability) == pytest.approx([0.9, 0.6])
    anns = annotations(labels, image_id=7, scores=np.array([0.9, 0.6]))
    assert [a["area"] for a in anns] == [100.0, 100.0] and anns[1]["bbox"] == [20.0, 20.0, 10.0, 10.0]
    decoded = mask_utils.decode({"size": anns[1]["segmentation"]["size"], "counts": anns[1]["segmentation"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), labels == 2)


def test_flooding_meets_halfway_on_a_ridge():
    from benchmark.instances import flood

    ridge = np.array([[0, 10, 20, 30, 40, 50, 45, 35, 25, 15, 5, 0]])
    markers = np.zeros_like(ridge)
    markers[0, 0], markers[0, -1] = 1, 2
    assert flood(ridge, markers, np.ones_like(ridge, dtype=bool)).tolist() == [[1] * 6 + [2] * 6]
    unreachable = np.ones_like(ridge, dtype=bool)
    unreachable[0, 3] = False
    assert flood(ridge, np.where(np.arange(12) == 0, 1, 0)[None], unreachable).tolist() == [[1, 1, 1] + [0] * 9]
