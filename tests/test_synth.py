"""The synthetic LIVECell look-alike: official format, determinism, statistics near issue 2's table, caching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pycocotools.coco import COCO
from scipy import ndimage

import tasks.synth as synth
from tasks.catalogue import LINES, line_of_file
from tasks.synth import layout
from tasks.morphology import local_std, otsu_baselines, summarize

NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9]+)_Phase_(?P<well>[A-H]\d{1,2})_(?P<loc>\d)_(?P<dd>\d\d)d(?P<hh>\d\d)h00m_(?P<crop>[1-4])\.tif$")

# issue 2's table: cells/image range, median area, solidity, circularity (None: "high"/unspecified)
TABLE = {
    "A172": ((100, 200), 1000, 0.85, 0.56),
    "BT-474": ((150, 250), 460, 0.93, 0.70),
    "BV-2": ((50, 800), 180, 0.95, None),
    "Huh7": ((40, 80), 1000, 0.95, 0.74),
    "MCF7": ((100, 800), 250, 0.96, 0.76),
    "SH-SY5Y": ((100, 400), 300, 0.73, 0.37),
    "SkBr3": ((50, 300), 285, 1.00, 0.95),
    "SK-OV-3": ((50, 300), 1080, 0.92, 0.68),
}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """4 images per line (2 train, 1 val, 1 test)."""
    return synth.generate(tmp_path_factory.mktemp("synth") / "root", seed=3, images_per_line=4)


def test_layout_and_names(small):
    train_val = sorted(p.name for p in (small / "images/livecell_train_val_images").iterdir())
    test = sorted(p.name for p in (small / "images/livecell_test_images").iterdir())
    assert len(train_val) == 8 * 3 and len(test) == 8 * 1
    for name in train_val + test:
        m = NAME.match(name)
        assert m, name
        assert int(m["hh"]) % 4 == 0 and int(m["hh"]) < 24
        line_of_file(name)  # a known prefix
    for line in LINES:
        wells = lambda names: {NAME.match(n)["well"] for n in names if n.startswith(line.prefix + "_")}
        assert wells(train_val) and wells(test) and not wells(train_val) & wells(test)
        for split in ("train", "val", "test"):
            assert (small / f"annotations/LIVECell_single_cells/{line.folder}/{split}.json").is_file()
    for split in ("train", "val", "test"):
        assert (small / f"annotations/LIVECell/livecell_coco_{split}.json").is_file()


LIVECELL_TIFF = {  # tags of the real LIVECell files (checked against the sample below where it is present)
    "ImageWidth": 704, "ImageLength": 520, "BitsPerSample": 8, "Compression": 5,  # LZW
    "PhotometricInterpretation": 1, "SamplesPerPixel": 1, "RowsPerStrip": 11, "Predictor": 2,  # horizontal
}
LIVECELL_KEYS = {
    "document": ["info", "licenses", "categories", "images", "annotations"],
    "image": ["id", "width", "height", "file_name", "original_filename", "url"],
    "annotation": ["id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"],
}


def tiff_tags(path: Path) -> dict:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return {k: page.tags[k].value for k in LIVECELL_TIFF}


def coco_keys(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return {"document": list(doc), "image": list(doc["images"][0]), "annotation": list(doc["annotations"][0])}


def test_reference_format_is_the_real_one(sample_root):
    assert tiff_tags(next((sample_root / "images/livecell_train_val_images").glob("*.tif"))) == LIVECELL_TIFF
    real = coco_keys(sample_root / "annotations/LIVECell/livecell_coco_val.json")
    assert {k: sorted(v) for k, v in real.items()} == {k: sorted(v) for k, v in LIVECELL_KEYS.items()}


def test_tiff_encoding(small):
    for path in sorted((small / "images/livecell_test_images").glob("*.tif"))[:4]:
        assert tiff_tags(path) == LIVECELL_TIFF


def test_coco_keys_and_rules(small):
    ids = []
    for split in ("train", "val", "test"):
        path = small / f"annotations/LIVECell/livecell_coco_{split}.json"
        assert {k: sorted(v) for k, v in coco_keys(path).items()} == {k: sorted(v) for k, v in LIVECELL_KEYS.items()}
        doc = json.loads(path.read_text())
        assert doc["categories"] == [{"supercategory": "cell", "id": 1, "name": "cell"}]
        assert {a["category_id"] for a in doc["annotations"]} == {1} and {a["iscrowd"] for a in doc["annotations"]} == {0}
        for a in doc["annotations"][::50]:
            (flat,) = a["segmentation"]
            p = np.array(flat).reshape(-1, 2)
            assert not np.array_equal(p[0], p[-1])  # unclosed, as LIVECell
            assert a["area"] == pytest.approx(0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))))
            assert a["bbox"] == pytest.approx([p[:, 0].min(), p[:, 1].min(), np.ptp(p[:, 0]), np.ptp(p[:, 1])])
            assert (p >= 0).all() and (p[:, 0] <= 704).all() and (p[:, 1] <= 520).all()
        ids += [im["id"] for im in doc["images"]] + [a["id"] for a in doc["annotations"]]
        # per-line files partition the wide file, ids included
        per_line = [json.loads((small / f"annotations/LIVECell_single_cells/{line.folder}/{split}.json").read_text()) for line in LINES]
        assert sorted(im["id"] for d in per_line for im in d["images"]) == sorted(im["id"] for im in doc["images"])
        assert sum(len(d["annotations"]) for d in per_line) == len(doc["annotations"])
        COCO(str(path))  # loads in stock pycocotools
    assert len(ids) == len(set(ids)) and min(ids) == 1  # one counter shared by images and annotations


def test_same_seed_same_bytes(small, tmp_path):
    """Each line's images and outlines depend on (seed, line) only, not on which worker makes them or when; a rerun
    of two lines in this process (the module fixture ran them in a pool) gives the same TIFF bytes and polygons."""
    for line_index in (0, len(LINES) - 1):
        line = LINES[line_index]
        for folder in set(layout.IMAGE_DIRS.values()):
            (tmp_path / "images" / folder).mkdir(parents=True, exist_ok=True)
        again = synth._generate_line(tmp_path, 3, line_index, synth.split_sizes(4))
        for split, entries in again.items():
            written = json.loads((small / f"annotations/LIVECell_single_cells/{line.folder}/{split}.json").read_text())
            assert [im["file_name"] for im in written["images"]] == [name for name, _ in entries]
            assert [a["segmentation"][0] for a in written["annotations"]] == [
                [round(float(v), 2) for v in polygon.ravel()] for _, polygons in entries for polygon in polygons
            ]
            for name, _ in entries:
                assert layout.image_path(tmp_path, split, name).read_bytes() == layout.image_path(small, split, name).read_bytes(), name


def test_statistics_near_the_table(small):
    from tasks.livecell import LiveCell

    data = LiveCell(small)
    table = summarize(data, splits=("train", "test")).groupby("line").agg("median", numeric_only=True)
    for line, ((low, high), area, sol, circ) in TABLE.items():
        row = table.loc[line]
        assert 0.75 * low <= row["cells_per_image"] <= high, line
        assert row["median_area"] == pytest.approx(area, rel=0.2), line
        assert row["solidity"] == pytest.approx(sol, abs=0.05), line
        if circ is not None:
            assert row["circularity"] == pytest.approx(circ, abs=0.08), line
        assert row["median_intensity"] == 128
    assert table.loc["BV-2", "circularity"] > 0.8
    for line in LINES:  # density grows with time
        infos = data.images(line, "train")
        hours = [int(NAME.match(i.file_name)["dd"]) * 24 + int(NAME.match(i.file_name)["hh"]) for i in infos]
        cover = [data.mask(i).mean() for i in infos]
        assert cover[int(np.argmax(hours))] > cover[int(np.argmin(hours))], line


def test_appearance_flat_background_textured_cells_not_bright(small):
    from tasks.livecell import LiveCell

    data = LiveCell(small)
    for line in LINES:
        info = data.images(line, "train")[-1]
        image, mask = data.image(info), data.mask(info)
        std = local_std(image)
        far = ~ndimage.binary_dilation(mask, iterations=8)
        assert 1.2 <= np.median(std[far]) <= 3.0, line
        assert 4.0 <= np.median(std[mask]) <= 30.0, line
        assert abs(image[mask].mean() - image[far].mean()) < 12, line


def test_classical_baselines_not_easier_than_real(small, sample_root):
    from tasks.livecell import LiveCell

    synthetic = otsu_baselines(LiveCell(small), splits=("train",))
    real = otsu_baselines(LiveCell(sample_root), splits=("val",))
    assert (synthetic["otsu_iou_raw"] < 0.4).all()
    assert synthetic["otsu_iou_std"].mean() <= real["otsu_iou_std"].mean() + 0.15


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="images_per_line"):
        synth.generate(tmp_path / "x", images_per_line=2)
    with pytest.raises(ValueError, match="seed"):
        synth.generate(tmp_path / "x", seed=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "junk").write_text("")
    with pytest.raises(ValueError, match="not an empty directory"):
        synth.generate(tmp_path / "full", images_per_line=3)
    assert synth.split_sizes(24) == {"train": 12, "val": 4, "test": 8}


def test_default_root_generates_once_per_version(tmp_path, monkeypatch):
    calls = []

    def fake_generate(root, progress=None):
        calls.append(Path(root))
        (Path(root) / "marker").write_text(synth.GENERATOR_VERSION)
        return Path(root)

    monkeypatch.setenv("FEWSHOT_CELLSEG_CACHE", str(tmp_path))
    monkeypatch.setattr(synth, "generate", fake_generate)
    first = synth.default_root()
    assert first == tmp_path / f"synthetic-{synth.GENERATOR_VERSION}" and (first / "marker").is_file()
    assert synth.default_root() == first and len(calls) == 1  # reused
    monkeypatch.setattr(synth, "GENERATOR_VERSION", "test-next")
    second = synth.default_root()
    assert second == tmp_path / "synthetic-test-next" and len(calls) == 2  # regenerated for a new version
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])  # no staging left over
