"""Morphology measures against closed forms and brute force; summarize against pycocotools on the real sample."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from tasks.morphology import (
    circularity,
    local_std,
    otsu_baselines,
    otsu_ious,
    otsu_threshold,
    polygon_area,
    polygon_perimeter,
    solidity,
    summarize,
)


def regular(n: int, radius: float = 10.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def test_area_perimeter_of_a_square_and_an_l_shape():
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    assert polygon_area(square) == 16 and polygon_perimeter(square) == 16
    ell = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]], float)
    assert polygon_area(ell) == pytest.approx(3.0)
    assert polygon_area(ell[::-1]) == pytest.approx(3.0)  # orientation does not matter
    assert solidity(ell) == pytest.approx(3.0 / 3.5)  # hull cuts the missing corner diagonally
    assert solidity(square) == pytest.approx(1.0)


def test_circularity_of_regular_polygons_matches_closed_form():
    for n in (3, 4, 6, 64):
        assert circularity(regular(n)) == pytest.approx(np.pi / (n * np.tan(np.pi / n)))
    assert circularity(regular(4)) == pytest.approx(np.pi / 4)


def test_degenerate_polygons_give_nan():
    flat = np.array([[0, 0], [1, 1], [2, 2]], float)
    assert np.isnan(solidity(flat))
    assert np.isnan(circularity(np.zeros((3, 2))))


def test_otsu_threshold_maximises_between_class_variance_by_brute_force():
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(60, 8, 3000), rng.normal(170, 15, 1000)].clip(0, 255).round()
    t = otsu_threshold(values)

    def between(cut):
        low, high = values[values <= cut], values[values > cut]
        return len(low) * len(high) * (low.mean() - high.mean()) ** 2

    cuts = np.unique(values)[:-1]
    best = cuts[np.argmax([between(c) for c in cuts])]
    assert between(t) == pytest.approx(between(best), rel=1e-3)
    assert 80 < t < 140


def test_local_std_equals_window_std():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 50)).astype(np.uint8)
    std = local_std(image, 9)
    for y, x in [(10, 10), (20, 33), (30, 40)]:
        assert std[y, x] == pytest.approx(image[y - 4 : y + 5, x - 4 : x + 5].std(), rel=1e-6)


def test_otsu_ious_find_a_textured_square_but_not_by_brightness():
    rng = np.random.default_rng(2)
    image = 128 + rng.normal(0, 1.5, (100, 100))
    mask = np.zeros((100, 100), bool)
    mask[30:70, 30:70] = True
    image[mask] += rng.normal(0, 20, mask.sum())
    raw, std = otsu_ious(np.clip(image, 0, 255).astype(np.uint8), mask)
    assert raw < 0.6 and std > 0.7


def test_summarize_real_sample_against_pycocotools(sample_root):
    from tasks.livecell import LiveCell

    table = summarize(LiveCell(sample_root)).set_index("line")
    assert list(table["split"].unique()) == ["val"]
    assert sorted(table.index) == ["BT-474", "Huh7", "MCF7"]
    coco = COCO(str(sample_root / "annotations/LIVECell/livecell_coco_val.json"))
    for line, prefix in [("BT-474", "BT474"), ("Huh7", "Huh7"), ("MCF7", "MCF7")]:
        ids = [i for i, im in coco.imgs.items() if im["file_name"].startswith(prefix + "_")]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=ids))
        row = table.loc[line]
        assert row["images"] == len(ids)
        assert abs(row["cells"] - len(anns)) <= 0.01 * len(anns)  # the reader may drop a few tiny objects
        assert row["median_area"] == pytest.approx(np.median([a["area"] for a in anns]), rel=0.02)
        cover = np.mean([np.any([coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=i))], 0).mean() for i in ids])
        assert row["cover_fraction"] == pytest.approx(cover, abs=0.005)
        assert row["median_intensity"] == 128
    # the real sample, as measured when this was written (issue 2's table: solidity 0.93-0.96, circularity 0.70-0.76)
    assert table.loc["MCF7", "solidity"] == pytest.approx(0.95, abs=0.02)
    assert table.loc["BT-474", "circularity"] == pytest.approx(0.71, abs=0.02)


def test_otsu_baselines_on_real_sample_are_low(sample_root):
    from tasks.livecell import LiveCell

    table = otsu_baselines(LiveCell(sample_root))
    assert (table["otsu_iou_raw"] < 0.35).all()
    assert 0.45 < table["otsu_iou_std"].mean() < 0.65
