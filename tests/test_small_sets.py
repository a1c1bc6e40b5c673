"""The small-set episode rule: lines with fewer images than k + q take several crops per image, never one image
for both support and queries, and one image is a clear error."""

from __future__ import annotations

import pytest
from test_livecell import write_dataset

from tasks.episodes import load_episode, sample_episode, sample_small_episode
from tasks.errors import DataError
from tasks.livecell import LiveCell


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Datasets with 1, 2 and 3 images per line and split."""
    return {
        n: LiveCell(write_dataset(tmp_path_factory.mktemp(f"small{n}") / "livecell", per_split=n, width=96, height=80, seed=n))
        for n in (1, 2, 3)
    }


def ids(pairs):
    return [image_id for image_id, _ in pairs]


@pytest.mark.parametrize("n, k, q, support_images", [(2, 3, 4, 1), (3, 3, 2, 2), (3, 1, 4, 1)])
def test_crops_share_images_but_support_and_queries_never_do(small, n, k, q, support_images):
    data = small[n]
    for index in range(12):
        episode = sample_episode(data, "MCF7", "test", k, q, 32, seed=0, index=index)  # k + q > n: the small-set rule
        manifest = episode.manifest
        assert manifest == sample_small_episode(data, "MCF7", "test", k, q, 32, 0, index).manifest
        assert (manifest.k, manifest.q) == (k, q)
        assert episode.support_x.shape == (k, 1, 32, 32) and episode.query_x.shape == (q, 1, 32, 32)
        assert len(set(ids(manifest.support))) == support_images and len(set(ids(manifest.query))) == n - support_images
        assert not set(ids(manifest.support)) & set(ids(manifest.query))
        boxes = [box for _, box in manifest.support + manifest.query]
        assert len(set(boxes)) > 1  # each crop at its own position
        again = load_episode(data, manifest)
        assert again.query_y.equal(episode.query_y) and again.support_x.equal(episode.support_x)


def test_episodes_vary_with_the_index_and_repeat_with_the_seed(small):
    data = small[2]
    a = [sample_small_episode(data, "MCF7", "test", 3, 4, 32, 0, i).manifest for i in range(6)]
    b = [sample_small_episode(data, "MCF7", "test", 3, 4, 32, 0, i).manifest for i in range(6)]
    assert a == b and len({(m.support, m.query) for m in a}) == 6
    assert len({ids(m.support)[0] for m in a}) == 2  # each image serves as support in some episode


def test_whole_images_repeat_support_images_and_use_each_query_image_once(small):
    episode = sample_small_episode(small[3], "BT474", "test", 3, 4, None, 0, 0)
    manifest = episode.manifest
    assert (manifest.k, manifest.q) == (3, 1)
    assert len(set(ids(manifest.support))) == 2 and len(ids(manifest.query)) == 1
    assert episode.support_x.shape == (3, 1, 80, 96)


def test_one_image_is_a_clear_error(small):
    with pytest.raises(DataError, match="MCF7 has 1 test image; an episode needs at least two"):
        sample_episode(small[1], "MCF7", "test", 1, 1, 32, 0, 0)
