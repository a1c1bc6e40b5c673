"""Data: sampling a meta-batch's episodes, and loading masks with the disk cache cold (rasterise from polygons
and write the cache) and warm (read the cache back), on the synthetic set and, where $LIVECELL_SAMPLE is set,
on the real sample."""

from __future__ import annotations

import itertools
import shutil

import pytest

from benchmark.runner import meta_batch
from tasks.coco import cache_root
from tasks.livecell import SPLITS, LiveCell

MASKS_PER_ROUND = 6


@pytest.mark.benchmark(group="data")
def test_sample_meta_batch(benchmark, default_config, default_data):
    steps = itertools.count()  # a new meta-step's episodes each call, as in training
    batch = benchmark.pedantic(lambda: meta_batch(default_config, default_data, next(steps)), rounds=50, warmup_rounds=5)
    assert batch.tasks == default_config.meta_batch


@pytest.fixture(params=["synthetic", "sample"])
def mask_root(request, synthetic_root):
    return synthetic_root if request.param == "synthetic" else request.getfixturevalue("sample_root")


def fresh_reader(root) -> tuple[tuple, dict]:
    """A new reader (empty in-memory cache) with its annotation index parsed: only mask loading is timed."""
    data = LiveCell(root)
    infos = max((data.images(line, split) for split in SPLITS for line in data.lines(split)), key=len)
    return (data, infos[:MASKS_PER_ROUND]), {}


def load_masks(data, infos):
    return [data.mask(info) for info in infos]


@pytest.mark.benchmark(group="mask loading")
@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_mask_loading(benchmark, mask_root, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CELLSEG_CACHE", str(tmp_path))  # a private cache: the cold rounds empty it

    def setup():
        if cache == "cold":
            shutil.rmtree(cache_root() / "masks", ignore_errors=True)
        else:
            load_masks(*fresh_reader(mask_root)[0])  # make sure the disk cache holds them
        return fresh_reader(mask_root)

    masks = benchmark.pedantic(load_masks, setup=setup, rounds=5)
    benchmark.extra_info["masks"] = len(masks)
    assert masks and all(mask.any() for mask in masks)
