"""`predict` end to end on a smoke-preset run: outputs, image conversion, support crops, one-line errors, and the real
sample (two annotated MCF7 images adapt the run, an unannotated one is segmented)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools.coco import COCO

from benchmark.cli import main
from benchmark.commands.predict import support_tiles, with_adaptation
from benchmark.config import resolve
from benchmark.execute import execute
from benchmark.images import read_image
from benchmark.store import Store
from benchmark.trained import run_weights
from tasks.episodes import MIN_FOREGROUND
from tasks.livecell import LiveCell


@pytest.fixture(scope="module")
def smoke_run(synthetic_root, tmp_path_factory):
    """(results folder, run id) of a finished smoke-preset reptile run, MCF7 held out."""
    results = tmp_path_factory.mktemp("results")
    config = resolve("smoke", algo="reptile", holdout="MCF7", data_root=str(synthetic_root))
    execute(config, Store(results))
    return results, config.run_id


@pytest.fixture(scope="module")
def support(synthetic_root, tmp_path_factory):
    """Two annotated MCF7 test images of the synthetic set as 8-bit PNG image and mask files, and a third image."""
    folder = tmp_path_factory.mktemp("support")
    data = LiveCell(synthetic_root)
    infos = data.images("MCF7", "test")[:3]
    pairs = []
    for info in infos[:2]:
        image, mask = folder / f"{info.id}.png", folder / f"{info.id}.mask.png"
        Image.fromarray(data.image(info)).save(image)
        Image.fromarray(data.mask(info).astype(np.uint8) * 255).save(mask)
        pairs.append(f"{image}:{mask}")
    return pairs, data.image(infos[2]), folder


def predict(smoke_run, *extra):
    results, run_id = smoke_run
    return main(["predict", run_id, "--results", str(results), *extra])


def test_predict_writes_a_mask_an_overlay_per_image_and_one_coco_file(smoke_run, support, tmp_path):
    pairs, image, _ = support
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "grey8.png")
    Image.fromarray(image[:77, :101]).save(images / "odd-size.tif")  # not a multiple of the model's 4
    out = tmp_path / "out"
    assert predict(smoke_run, "--support", *pairs, "--images", str(images), "--out", str(out)) == 0
    for name, shape in (("grey8", image.shape), ("odd-size", (77, 101))):
        mask = np.asarray(Image.open(out / f"{name}.mask.png"))
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / f"{name}.overlay.png")).shape == (*shape, 3)
    coco = COCO(str(out / "instances.json"))
    assert sorted(Path(i["file_name"]).name for i in coco.dataset["images"]) == ["grey8.png", "odd-size.tif"]
    for image_id, entry in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        covered = sum((coco.annToMask(a) for a in anns), np.zeros((entry["height"], entry["width"]), dtype=np.int64))
        assert covered.max() <= 1  # instances do not overlap
        mask = np.asarray(Image.open(out / f"{Path(entry['file_name']).stem}.mask.png")) > 0
        assert not (covered.astype(bool) & ~mask).any()  # every instance lies in the predicted mask
        assert all(0.5 <= a["score"] <= 1 for a in anns)


def test_images_are_converted_as_the_training_data_were(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, size=(30, 40), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "g16.tif")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(tmp_path / "rgb.png")
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(tmp_path / "rgb.jpg", quality=100)
    expected = grey.astype(np.float32) / 255
    for name in ("g8.png", "g16.tif", "g16.png", "rgb.png"):
        assert np.allclose(read_image(tmp_path / name), expected, atol=1e-6), name
    assert np.abs(read_image(tmp_path / "rgb.jpg") - expected).max() < 0.05  # JPEG is lossy


def test_support_crops_are_the_runs_crop_size_and_mostly_cell(smoke_run, synthetic_root):
    data = LiveCell(synthetic_root)
    support = [(Path(info.file_name), data.image(info) / 255.0, data.mask(info)) for info in data.images("MCF7", "test")[:2]]
    x, y = support_tiles(support, 32, 3, seed=0)
    assert x.shape == y.shape == (1, 6, 1, 32, 32)
    assert (y.mean(dim=(2, 3, 4)) >= MIN_FOREGROUND).all()
    again, _ = support_tiles(support, 32, 3, seed=0)
    other, _ = support_tiles(support, 32, 3, seed=1)
    assert x.equal(again) and not x.equal(other)
    whole, _ = support_tiles(support, None, 3, seed=0)
    assert whole.shape == (1, 2, 1, *support[0][1].shape)


def test_steps_and_rate_override_the_runs_adaptation(smoke_run, support, tmp_path):
    results, run_id = smoke_run
    algo, _ = run_weights(results / "runs" / run_id)
    assert with_adaptation(algo, None, None) == algo.adaptation
    changed = with_adaptation(algo, 5, 0.05)
    assert (changed.steps, changed.rate, changed.parameters) == (5, 0.05, algo.adaptation.parameters)
    pairs, image, _ = support
    Image.fromarray(image).save(tmp_path / "x.png")
    masks = {}
    for steps in ("0", "2"):
        assert predict(smoke_run, "--support", *pairs, "--images", str(tmp_path / "x.png"), "--out", str(tmp_path / steps), "--steps", steps) == 0
        masks[steps] = np.asarray(Image.open(tmp_path / steps / "x.mask.png"))
    assert not np.array_equal(masks["0"], masks["2"])  # adapting changes the prediction


def test_bad_inputs_are_one_line_errors_naming_the_file(smoke_run, support, tmp_path, capsys):
    pairs, image, folder = support
    (image_path, mask_path) = pairs[0].rsplit(":", 1)
    Image.fromarray(image).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros(image.shape, dtype=np.uint8)).save(tmp_path / "empty.png")
    (tmp_path / "broken.png").write_text("not an image")
    target = ["--images", str(tmp_path / "x.png"), "--out", str(tmp_path / "out")]
    cases = [
        (["--support", f"{image_path}:{tmp_path / 'small.png'}", *target], "small.png: mask is 10x10"),
        (["--support", f"{image_path}:{tmp_path / 'empty.png'}", *target], "empty.png: the mask is empty"),
        (["--support", f"{tmp_path / 'broken.png'}:{mask_path}", *target], "broken.png: unreadable image"),
        (["--support", pairs[0], "--images", str(tmp_path / "broken.png"), "--out", str(tmp_path / "out")], "broken.png: unreadable image"),
        (["--support", f"{tmp_path / 'missing.png'}:{mask_path}", *target], "missing.png: image not found"),
    ]
    for extra, message in cases:
        assert predict(smoke_run, *extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("error:") == 1, err

    results, run_id = smoke_run
    assert main(["predict", "nosuchrun", "--results", str(results), "--support", *pairs, *target]) == 2
    assert "'nosuchrun' matches no run" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(results / "runs" / run_id, bare)
    (bare / "checkpoint.pt").unlink()
    assert main(["predict", str(bare), "--support", *pairs, *target]) == 2
    err = capsys.readouterr().err
    assert "the run kept no weights (checkpoint.pt missing" in err and "run --preset smoke --algo reptile --holdout MCF7 --k 3 --seed 0 --data-root" in err


def test_predict_on_real_mcf7_from_two_annotated_images(smoke_run, sample_root, tmp_path):
    root = sample_root
    data = LiveCell(root)
    infos = data.images("MCF7", "val")[:2]
    pairs = []
    for info in infos:
        mask = tmp_path / f"{info.id}.mask.png"  # derived from the sample, kept in the test's temporary folder
        Image.fromarray(data.mask(info).astype(np.uint8) * 255).save(mask)
        pairs.append(f"{info.path}:{mask}")
    target = sorted((root / "unannotated").glob("MCF7_*.tif"))[0]
    assert predict(smoke_run, "--support", *pairs, "--images", str(target), "--out", str(tmp_path / "out")) == 0
    assert (tmp_path / "out" / f"{target.stem}.mask.png").is_file() and (tmp_path / "out" / f"{target.stem}.overlay.png").is_file()
    coco = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [str(target)] and coco["images"][0]["width"] == 704


def test_truth_coco_scores_the_images_it_annotates(smoke_run, support, synthetic_root, tmp_path):
    pairs, _, _ = support
    data = LiveCell(synthetic_root)
    info = data.images("MCF7", "test")[3]
    shutil.copy(info.path, tmp_path / info.file_name)
    truth = data.annotation_file("MCF7", "test")
    out = tmp_path / "out"
    assert predict(smoke_run, "--support", *pairs, "--images", str(tmp_path / info.file_name), "--out", str(out), "--truth-coco", str(truth)) == 0
    scores = pd.read_csv(out / "scores.csv")
    mask = np.asarray(Image.open(out / f"{Path(info.file_name).stem}.mask.png")) > 0
    true = data.mask(info)
    assert scores.iou[0] == pytest.approx(np.count_nonzero(mask & true) / np.count_nonzero(mask | true), rel=1e-5)  # CSV keeps 6 digits
    assert scores.cells[0] == data.instances(info).max()
    assert 0 <= scores.ap[0] <= scores.ap50[0] <= 1 and 0 < scores.ap50_truth_mask[0] <= 1


def test_instance_options_reach_the_instance_rule():
    from benchmark.cli import build_parser
    from benchmark.commands.predict import instance_options
    from benchmark.instances import INSTANCE_DEFAULTS

    for command in (["predict", "r", "--support", "a:b", "--images", "x", "--out", "o"], ["evaluate", "r", "--data-root", "d", "--split", "val"]):
        assert instance_options(build_parser().parse_args(command)) == INSTANCE_DEFAULTS
        asked = build_parser().parse_args([*command, "--no-split", "--min-distance", "7", "--sigma", "0", "--min-radius", "2", "--min-size", "3"])
        assert instance_options(asked) == {"split": False, "min_distance": 7, "sigma": 0.0, "min_radius": 2.0, "min_size": 3}
