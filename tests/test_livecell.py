"""The LIVECell reader: masks against pycocotools' own annToMask, LIVECell's quirks, the layout
variants, the caches, and every bad input's one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import tasks.coco
import tasks.mask_cache
from tasks.catalogue import cell_line
from tasks.errors import DataError
from tasks.livecell import LiveCell
from tasks.mask_cache import MIN_CELL_PIXELS, decode_runs

# pycocotools' annToMask trips a numpy 2 deprecation inside pycocotools itself
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# ---- a small LIVECell-format dataset written by the tests -----------------------------------------


def blob(rng: np.random.Generator, width: int, height: int, radius: float) -> list[float]:
    """A wobbly star-shaped polygon, vertices rounded to 0.01 px as in LIVECell, possibly over the border."""
    cx, cy = rng.uniform(-5, width + 5), rng.uniform(-5, height + 5)
    n = int(rng.integers(8, 30))
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.6, 1.3, n)
    xy = np.stack([cx + r * np.cos(angle), cy + r * np.sin(angle)], axis=1).round(2)
    return [float(v) for v in xy.ravel()]


def make_coco(rng, names_ids: list[tuple[str, int]], width: int, height: int, cells: int = 12, next_id: int = 10_000) -> dict:
    images = [
        {"id": image_id, "width": width, "height": height, "file_name": name, "original_filename": name, "url": ""}
        for name, image_id in names_ids
    ]
    annotations = []
    for _, image_id in names_ids:
        for _ in range(cells):
            segmentation = [blob(rng, width, height, rng.uniform(2, 14))]
            annotations.append(
                {"id": next_id, "image_id": image_id, "segmentation": segmentation, "area": 0.0, "bbox": [0, 0, 0, 0], "iscrowd": 0, "category_id": 1}
            )
            next_id += 1
    return {"info": {}, "licenses": [], "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}], "images": images, "annotations": annotations}


def write_dataset(
    root: Path, lines=("MCF7", "BT474"), per_split: int = 4, width: int = 96, height: int = 80, seed: int = 0,
    subfolders: bool = False, per_line: bool = False, cells: int = 12,
) -> Path:
    """LIVECell layout with noise images and random overlapping polygons; image ids 1000 * split + n."""
    rng = np.random.default_rng(seed)
    for s, split in enumerate(("train", "val", "test")):
        folder = root / "images" / ("livecell_test_images" if split == "test" else "livecell_train_val_images")
        wide: list[tuple[str, int]] = []
        for line in lines:
            names = [(f"{line}_Phase_A{s + 1}_1_{n:02d}d00h00m_1.tif", 1000 * (s + 1) + 100 * lines.index(line) + n) for n in range(per_split)]
            for name, _ in names:
                target = folder / line if subfolders else folder
                target.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(target / name, compression="tiff_lzw")
            wide += names
            if per_line:
                coco = make_coco(rng, names, width, height, cells, next_id=100_000 * (s + 1) + 10_000 * lines.index(line))
                write_json(root / "annotations" / "LIVECell_single_cells" / line.lower() / f"{split}.json", coco)
        if not per_line:
            write_json(root / "annotations" / "LIVECell" / f"livecell_coco_{split}.json", make_coco(rng, wide, width, height, cells, next_id=100_000 * (s + 1)))
    return root


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def read_json(path: Path):
    return json.loads(path.read_text())


def wide_file(root: Path, split: str) -> Path:
    return root / "annotations" / "LIVECell" / f"livecell_coco_{split}.json"


@pytest.fixture
def root(tmp_path) -> Path:
    return write_dataset(tmp_path / "livecell")


# ---- masks against pycocotools ---------------------------------------------------------------------


def reference_instances(coco: COCO, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented rules, the slow obvious way from annToMask: (union of kept cells, instance labels)."""
    anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: a["id"])
    masks = [coco.annToMask(a).astype(bool) for a in anns]
    kept = [m for m in masks if m.sum() >= MIN_CELL_PIXELS]
    info = coco.imgs[image_id]
    union = np.zeros((info["height"], info["width"]), dtype=bool)
    labels = np.zeros(union.shape, dtype=np.int32)
    best = np.full(union.shape, np.iinfo(np.int64).max)
    for label, m in enumerate(kept, start=1):
        union |= m
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        priority = int(m.sum()) * 100_000 + label  # fewest pixels, then annotation order
        win = m[box] & (priority < best[box])
        labels[box][win], best[box][win] = label, priority
    return union, labels


def check_against_pycocotools(data: LiveCell, annotation_file: Path, split: str, lines=None) -> int:
    coco = COCO(str(annotation_file))
    checked = 0
    for line in lines or data.lines(split):
        for info in data.images(line, split):
            union, labels = reference_instances(coco, info.id)
            np.testing.assert_array_equal(data.mask(info), union, err_msg=info.file_name)
            np.testing.assert_array_equal(data.instances(info), labels, err_msg=info.file_name)
            checked += 1
    return checked


def test_masks_equal_union_of_annToMask_on_generated_data(root):
    data = LiveCell(root)
    assert check_against_pycocotools(data, wide_file(root, "train"), "train") == 8


@pytest.mark.slow
def test_masks_equal_union_of_annToMask_on_the_synthetic_generator(tmp_path):
    from tasks.synth import generate

    root = generate(tmp_path / "synth", seed=5, images_per_line=3)
    data = LiveCell(root)
    assert len(data.lines("val")) == 8
    assert check_against_pycocotools(data, wide_file(root, "val"), "val") == 8
    per_line = root / "annotations" / "LIVECell_single_cells" / "shsy5y" / "test.json"
    assert data.annotation_file("SH-SY5Y", "test") == per_line
    assert check_against_pycocotools(data, per_line, "test", ["SH-SY5Y"]) == 1


def test_masks_equal_union_of_annToMask_on_the_real_sample(sample_root):
    data = LiveCell(sample_root)
    assert check_against_pycocotools(data, wide_file(sample_root, "val"), "val") == 5


def test_real_sample_reads_as_documented(sample_root):
    data = LiveCell(sample_root)
    assert [line.name for line in data.lines("val")] == ["BT-474", "Huh7", "MCF7"]
    assert data.lines("train") == [] and data.lines("test") == []
    cells = {info.file_name: len(data.polygons(info)) for line in data.lines("val") for info in data.images(line, "val")}
    assert sorted(cells.values()) == [73, 108, 174, 177, 711]  # as the sample's README counts them
    info = data.images("MCF7", "val")[0]
    image = data.image(info)
    assert image.dtype == np.uint8 and image.shape == (520, 704) == (info.height, info.width)
    assert 100 < np.median(image) < 160


def test_decode_runs_matches_pycocotools_decode():
    rng = np.random.default_rng(1)
    height, width = 300, 200  # counts large enough for multi-chunk and negative deltas
    polys = [[blob(rng, width, height, rng.uniform(3, 120)) for _ in range(int(rng.integers(1, 4)))] for _ in range(40)]
    rles = [mask_utils.merge(mask_utils.frPyObjects(p, height, width)) for p in polys]
    owner, start, length = decode_runs([r["counts"] for r in rles])
    for i, rle in enumerate(rles):
        flat = np.zeros(height * width, dtype=bool)
        for s, n in zip(start[owner == i], length[owner == i]):
            flat[s : s + n] = True
        np.testing.assert_array_equal(flat.reshape(width, height).T, mask_utils.decode(rle).astype(bool))


def test_polygons_follow_label_order_and_match_the_file(root):
    data = LiveCell(root)
    coco = read_json(wide_file(root, "val"))
    info = data.images("MCF7", "val")[1]
    polygons = data.polygons(info)
    labels = data.instances(info)
    assert len(polygons) >= labels.max()
    anns = sorted((a for a in coco["annotations"] if a["image_id"] == info.id), key=lambda a: a["id"])
    kept = [a for a in anns if mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], info.height, info.width))).sum() >= MIN_CELL_PIXELS]
    assert len(polygons) == len(kept)
    for polygon, ann in zip(polygons, kept):
        assert polygon.dtype == np.float64 and polygon.shape[1] == 2
        np.testing.assert_array_equal(polygon.ravel(), ann["segmentation"][0])


# ---- rules and quirks ------------------------------------------------------------------------------


def square(x: float, y: float, size: float) -> list[float]:
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def one_image_dataset(tmp_path, segmentations: list[list[list[float]]], annotations_as_dict: bool = False) -> LiveCell:
    root = tmp_path / "one"
    folder = root / "images" / "livecell_train_val_images"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((40, 50), 128, dtype=np.uint8)).save(folder / "MCF7_Phase_A1_1_00d00h00m_1.tif")
    anns = [{"id": 10 + i, "image_id": 1, "segmentation": s, "iscrowd": 0, "category_id": 1} for i, s in enumerate(segmentations)]
    coco = {"images": [{"id": 1, "width": 50, "height": 40, "file_name": "MCF7_Phase_A1_1_00d00h00m_1.tif"}],
            "annotations": {str(a["id"]): a for a in anns} if annotations_as_dict else anns}
    write_json(wide_file(root, "train"), coco)
    return LiveCell(root)


def test_overlap_goes_to_the_smaller_cell(tmp_path):
    data = one_image_dataset(tmp_path, [[square(5, 5, 20)], [square(15, 15, 8)]])
    info = data.images("MCF7", "train")[0]
    labels = data.instances(info)
    assert labels[18, 18] == 2  # inside both: the small square (label 2) wins
    assert labels[8, 8] == 1
    assert (labels == 2).sum() == 8 * 8 and (labels == 1).sum() == 20 * 20 - 8 * 8  # the small one lies inside


def test_tiny_cells_are_dropped(tmp_path):
    data = one_image_dataset(tmp_path, [[square(5, 5, 20)], [square(30, 30, 2)], [square(40, 5, 4)]])
    info = data.images("MCF7", "train")[0]
    assert data.instances(info).max() == 2  # the 2x2 square (4 px < MIN_CELL_PIXELS) is gone
    assert len(data.polygons(info)) == 2
    assert not data.mask(info)[30:33, 30:33].any()


def test_annotations_stored_as_a_dict_keyed_by_id(tmp_path):
    """The Kaggle copy: stock pycocotools fails on it; we read it like the list form."""
    segs = [[square(5, 5, 20)], [square(15, 15, 8)]]
    as_list = one_image_dataset(tmp_path / "list", segs)
    as_dict = one_image_dataset(tmp_path / "dict", segs, annotations_as_dict=True)
    with pytest.raises(TypeError, match="string indices must be integers"):
        COCO(str(wide_file(as_dict.root, "train")))
    a, b = as_list.images("MCF7", "train")[0], as_dict.images("MCF7", "train")[0]
    np.testing.assert_array_equal(as_list.instances(a), as_dict.instances(b))


def test_same_image_under_two_ids_is_listed_once(root):
    path = wide_file(root, "train")
    coco = read_json(path)
    first = coco["images"][0]
    twin = dict(first, id=99_999)
    coco["images"].append(twin)
    coco["annotations"].append({"id": 999_999, "image_id": 99_999, "segmentation": [square(1, 1, 30)], "iscrowd": 0, "category_id": 1})
    write_json(path, coco)
    data = LiveCell(root)
    infos = data.images("MCF7", "train")
    assert [i.file_name for i in infos].count(first["file_name"]) == 1
    kept = next(i for i in infos if i.file_name == first["file_name"])
    assert kept.id == first["id"]  # it has more annotations than its one-cell twin
    # with more annotations under the second id, the second listing wins
    coco["annotations"] += [dict(a, id=a["id"] + 500_000, image_id=99_999) for a in coco["annotations"] if a["image_id"] == first["id"]]
    write_json(path, coco)
    assert next(i for i in LiveCell(root).images("MCF7", "train") if i.file_name == first["file_name"]).id == 99_999


def test_file_in_train_and_val_belongs_to_train_only(root):
    train, val = read_json(wide_file(root, "train")), read_json(wide_file(root, "val"))
    shared = train["images"][0]
    val["images"].append(dict(shared, id=77_777))
    write_json(wide_file(root, "val"), val)
    data = LiveCell(root)
    assert shared["file_name"] in [i.file_name for i in data.images("MCF7", "train")]
    assert shared["file_name"] not in [i.file_name for i in data.images("MCF7", "val")]
    assert len(data.images("MCF7", "val")) == 4


# ---- layout ----------------------------------------------------------------------------------------


def test_images_in_per_line_subfolders_prefix_or_lowercase(tmp_path):
    root = write_dataset(tmp_path / "sub", lines=("BT474", "SHSY5Y"), subfolders=True)
    (root / "images" / "livecell_train_val_images" / "SHSY5Y").rename(root / "images" / "livecell_train_val_images" / "shsy5y")
    data = LiveCell(root)
    assert data.lines("train") == [cell_line("BT-474"), cell_line("SH-SY5Y")]
    bt = data.images("bt474", "train")[0]
    assert bt.path.parent.name == "BT474"
    sh = data.images("SH-SY5Y", "val")[0]
    assert sh.path.parent.name == "shsy5y" and data.image(sh).shape == (80, 96)


def test_per_line_annotation_file_is_preferred(tmp_path):
    root = write_dataset(tmp_path / "both", lines=("MCF7", "BT474"))
    single = root / "annotations" / "LIVECell_single_cells" / "mcf7" / "train.json"
    coco = read_json(wide_file(root, "train"))
    coco["images"] = [im for im in coco["images"] if im["file_name"].startswith("MCF7")][:2]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    write_json(single, coco)
    data = LiveCell(root)
    assert data.annotation_file("MCF7", "train") == single
    assert len(data.images("MCF7", "train")) == 2
    assert data.annotation_file("BT-474", "train") == wide_file(root, "train")
    assert len(data.images("BT-474", "train")) == 4
    single.rename(single.with_name("livecell_mcf7_train.json"))  # the Kaggle name
    assert LiveCell(root).annotation_file("MCF7", "train") == single.with_name("livecell_mcf7_train.json")


def test_per_line_files_alone_suffice(tmp_path):
    root = write_dataset(tmp_path / "single", per_line=True)
    data = LiveCell(root)
    assert [line.name for line in data.lines("test")] == ["BT-474", "MCF7"]
    assert check_against_pycocotools(data, root / "annotations" / "LIVECell_single_cells" / "mcf7" / "val.json", "val", ["MCF7"]) == 4


# ---- caches and laziness ---------------------------------------------------------------------------


def test_second_open_uses_both_caches(root, monkeypatch):
    first = LiveCell(root)
    expected = {info.id: first.instances(info) for info in first.images("MCF7", "test")}

    def fail(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(tasks.coco, "_parse", fail)
    monkeypatch.setattr(tasks.mask_cache, "instance_map", fail)
    second = LiveCell(root)
    for info in second.images("MCF7", "test"):
        np.testing.assert_array_equal(second.instances(info), expected[info.id])


def test_cache_follows_the_file_content(root):
    data = LiveCell(root)
    info = data.images("MCF7", "train")[0]
    before = data.instances(info)
    coco = read_json(wide_file(root, "train"))
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != info.id]
    write_json(wide_file(root, "train"), coco)
    after = LiveCell(root)
    assert before.max() > 0 and after.instances(after.images("MCF7", "train")[0]).max() == 0


def test_damaged_mask_cache_file_is_rebuilt(root):
    data = LiveCell(root)
    info = data.images("MCF7", "train")[0]
    expected = data.instances(info)
    index, _ = data._locate(info)
    (tasks.mask_cache.mask_folder(index) / f"{info.id}.runs").write_bytes(b"SLBL truncated")
    np.testing.assert_array_equal(LiveCell(root).instances(info), expected)


def test_damaged_annotation_cache_is_rebuilt(root):
    expected = [info.id for info in LiveCell(root).images("BT474", "val")]
    digest = tasks.coco.file_digest(wide_file(root, "val"))
    (tasks.coco.cache_root() / "coco" / f"{digest}-v{tasks.coco.PARSE_VERSION}.npz").write_bytes(b"PK\x03\x04 damaged")
    assert [info.id for info in LiveCell(root).images("BT474", "val")] == expected


@pytest.mark.slow
def test_second_load_of_a_split_reads_the_cache_and_parses_nothing(tmp_path, monkeypatch):
    """The caches' speed is measured in tests/benchmarks; here, that a second load does none of the work."""
    monkeypatch.setenv("FEWSHOT_CELLSEG_CACHE", str(tmp_path / "cache"))  # its own cache: cold at the start
    root = write_dataset(tmp_path / "big", lines=("MCF7",), per_split=6, width=704, height=520, cells=400)
    work = {"parse": 0, "rasterise": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            work[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(tasks.coco, "_parse", counted("parse", tasks.coco._parse))
    monkeypatch.setattr(tasks.mask_cache, "instance_map", counted("rasterise", tasks.mask_cache.instance_map))

    def load() -> list[np.ndarray]:
        data = LiveCell(root)
        return [data.instances(info) for info in data.images("MCF7", "train")]

    first = load()
    assert work["parse"] >= 1 and work["rasterise"] == 6
    work.update(parse=0, rasterise=0)
    second = load()
    assert work == {"parse": 0, "rasterise": 0}
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_memory_stays_within_budget_and_holds_one_line(root):
    data = LiveCell(root, memory_bytes=3 * 96 * 80)
    for info in data.images("BT474", "train"):
        data.image(info)
        data.mask(info)
    held = data._memory
    assert held.bytes <= 3 * 96 * 80 and len(held.items) == 3
    index, _ = data._locate(data.images("BT474", "train")[0])
    assert isinstance(index.coords, np.memmap)  # parsed polygons are mapped, not loaded


def test_arrays_handed_out_are_read_only(root):
    data = LiveCell(root)
    info = data.images("MCF7", "val")[0]
    with pytest.raises(ValueError):
        data.image(info)[0, 0] = 1
    with pytest.raises(ValueError):
        data.mask(info)[0, 0] = True


# ---- bad input: one line naming the file and the problem ------------------------------------------


def one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_root(tmp_path):
    with pytest.raises(DataError) as err:
        LiveCell(tmp_path / "nowhere")
    one_line(err, "nowhere", "not found")


def test_root_without_annotations(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        LiveCell(tmp_path / "empty")
    one_line(err, "empty", "annotations")


def test_missing_annotation_file(root):
    wide_file(root, "test").unlink()
    data = LiveCell(root)
    assert data.lines("test") == []
    with pytest.raises(DataError) as err:
        data.images("MCF7", "test")
    one_line(err, "MCF7", "test")


@pytest.mark.parametrize(
    "damage, needles",
    [
        (lambda text: text[: len(text) // 2], ["invalid JSON", "truncated"]),
        (lambda text: "{'images': []}", ["invalid JSON"]),
        (lambda text: "[1, 2, 3]", ["not a COCO file"]),
        (lambda text: json.dumps({"images": []}), ["no 'annotations'"]),
        (lambda text: text.replace('"file_name"', '"name"', 1), ["images[0]", "file_name"]),
        (lambda text: json.dumps(dict(json.loads(text), annotations=[{"id": 1, "image_id": 5, "segmentation": [square(0, 0, 3)]}])), ["image 5", "not listed"]),
        (lambda text: json.dumps(dict(json.loads(text), annotations=[{"id": 1, "image_id": 1000, "segmentation": {"counts": "", "size": [1, 1]}}])), ["annotation 1", "RLE"]),
        (lambda text: b'{"images": "\xff"}', ["not a JSON text file"]),
    ],
)
def test_bad_annotation_files(root, damage, needles):
    path = wide_file(root, "train")
    text = path.read_text()
    damaged = damage(text)
    path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
    with pytest.raises(DataError) as err:
        LiveCell(root).images("MCF7", "train")
    one_line(err, str(path), *needles)


def test_listed_image_missing_on_disk(root):
    info = LiveCell(root).images("MCF7", "val")[2]
    info.path.unlink()
    with pytest.raises(DataError) as err:
        LiveCell(root).images("MCF7", "val")
    one_line(err, info.file_name, "missing on disk", "livecell_coco_val.json")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_unreadable_tiff(root):
    data = LiveCell(root)
    info = data.images("MCF7", "val")[0]
    info.path.write_bytes(b"II*\x00 this is not really a tiff")
    with pytest.raises(DataError) as err:
        data.image(info)
    one_line(err, str(info.path), "unreadable TIFF")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_truncated_tiff(root):
    data = LiveCell(root)
    info = data.images("MCF7", "val")[0]
    info.path.write_bytes(info.path.read_bytes()[:300])
    with pytest.raises(DataError) as err:
        data.image(info)
    one_line(err, str(info.path), "unreadable TIFF")


def test_image_size_disagreeing_with_annotations(root):
    data = LiveCell(root)
    info = data.images("MCF7", "val")[0]
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(info.path)
    with pytest.raises(DataError) as err:
        data.image(info)
    one_line(err, str(info.path), "12x10", "96x80")


def test_line_with_no_images(root):
    data = LiveCell(root)
    assert cell_line("A172") not in data.lines("train")
    with pytest.raises(DataError) as err:
        data.images("A172", "train")
    one_line(err, "livecell_coco_train.json", "no train images of cell line A172")


def test_unknown_line_and_split(root):
    data = LiveCell(root)
    with pytest.raises(ValueError, match="valid lines"):
        data.images("HeLa", "train")
    with pytest.raises(ValueError, match="valid splits"):
        data.lines("training")
