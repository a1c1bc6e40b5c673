"""The classical references against brute-force numpy, and their rule: polarity from the support set only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import algorithms
from algorithms.losses import iou
from benchmark.observations import CLASSICAL_REFERENCES, REFERENCES, SCRATCH
from benchmark.references import CLASSICAL, all_foreground, local_std, otsu, otsu_texture, otsu_threshold


def brute_force_otsu(values: np.ndarray) -> float:
    """Try every distinct value t as the split {x <= t} | {x > t}; the first maximiser of w0 w1 (mu0 - mu1)^2."""
    x = values.ravel().astype(np.float64)
    best, best_t = -1.0, x.max()
    for t in np.unique(x)[:-1]:
        low, high = x[x <= t], x[x > t]
        between = low.size * high.size * (low.mean() - high.mean()) ** 2
        if between > best:
            best, best_t = between, t
    return best_t


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.random((3, 9, 11)),  # continuous, all distinct
        lambda rng: np.round(rng.random((3, 16, 16)) * 255) / 255,  # 8-bit, many ties
        lambda rng: np.concatenate([rng.normal(0.2, 0.05, (3, 200)), rng.normal(0.7, 0.1, (3, 56))], axis=1),
        lambda rng: rng.integers(0, 3, (3, 40)).astype(float),  # three levels
    ],
)
def test_otsu_threshold_matches_brute_force(make):
    images = make(np.random.default_rng(0))
    thresholds = otsu_threshold(torch.from_numpy(images).float())
    for image, t in zip(images, thresholds):
        assert float(t) == pytest.approx(brute_force_otsu(np.float32(image)), abs=0)


def test_otsu_threshold_of_a_constant_image_splits_nothing():
    t = otsu_threshold(torch.full((1, 4, 4), 0.3))
    assert float(t) == pytest.approx(0.3)
    assert not (torch.full((4, 4), 0.3) > t).any()


def test_bimodal_threshold_separates_the_modes():
    rng = np.random.default_rng(1)
    low, high = rng.normal(0.2, 0.02, 500), rng.normal(0.8, 0.02, 300)
    t = float(otsu_threshold(torch.from_numpy(np.concatenate([low, high]))[None]))
    assert (low <= t).all() and (high > t).all()


def test_local_std_matches_brute_force_with_clipped_windows():
    rng = np.random.default_rng(2)
    images = rng.random((2, 1, 7, 9))
    got = local_std(torch.from_numpy(images), window=5).numpy()
    for b in range(2):
        for i in range(7):
            for j in range(9):
                window = images[b, 0, max(0, i - 2) : i + 3, max(0, j - 2) : j + 3]
                assert got[b, 0, i, j] == pytest.approx(window.std(), abs=1e-12)
    with pytest.raises(ValueError, match="odd number"):
        local_std(torch.from_numpy(images), window=4)


def _episodes(cells_bright: bool, size: int = 24, cell: int = 8, episodes: int = 2, k: int = 2, q: int = 3, seed: int = 0):
    """Flat background at 0.5, one square cell per image 0.3 brighter or darker, a little noise."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(episodes, k + q, 1, size, size)
    for e in range(episodes):
        for i in range(k + q):
            top, left = torch.randint(0, size - cell, (2,), generator=g).tolist()
            masks[e, i, 0, top : top + cell, left : left + cell] = 1
    images = 0.5 + (0.3 if cells_bright else -0.3) * masks + 0.01 * torch.randn(masks.shape, generator=g)
    return images[:, :k], masks[:, :k], images[:, k:], masks[:, k:]


@pytest.mark.parametrize("cells_bright", [True, False])
def test_otsu_finds_cells_of_either_polarity(cells_bright):
    support_x, support_y, query_x, query_y = _episodes(cells_bright)
    logits = otsu(support_x, support_y, query_x)
    assert logits.shape == query_x.shape and set(logits.unique().tolist()) <= {-1.0, 1.0}
    assert iou(logits.flatten(0, 1), query_y.flatten(0, 1)).min() > 0.95


def test_polarity_comes_from_the_support_set_not_the_query():
    """Support cells dark, query cells bright: the prediction follows the support, so it marks the background."""
    support_x, support_y, _, _ = _episodes(cells_bright=False)
    _, _, query_x, query_y = _episodes(cells_bright=True, seed=1)
    logits = otsu(support_x, support_y, query_x)
    assert iou(logits.flatten(0, 1), query_y.flatten(0, 1)).max() < 0.05


def test_otsu_texture_finds_textured_cells_of_the_same_mean_brightness():
    g = torch.Generator().manual_seed(3)
    support_x, support_y, query_x, query_y = _episodes(cells_bright=True, size=40, cell=16)
    textured = lambda x, y: 0.5 + y * 0.3 * torch.randn(x.shape, generator=g) + 0.01 * torch.randn(x.shape, generator=g)  # noqa: E731
    support_x, query_x = textured(support_x, support_y), textured(query_x, query_y)
    texture = iou(otsu_texture(support_x, support_y, query_x).flatten(0, 1), query_y.flatten(0, 1))
    intensity = iou(otsu(support_x, support_y, query_x).flatten(0, 1), query_y.flatten(0, 1))
    assert texture.mean() > 0.6 > intensity.mean()


def test_all_foreground_scores_the_cell_cover():
    support_x, support_y, query_x, query_y = _episodes(cells_bright=True)
    scores = iou(all_foreground(support_x, support_y, query_x).flatten(0, 1), query_y.flatten(0, 1))
    assert torch.allclose(scores, query_y.flatten(0, 1).mean(dim=(1, 2, 3)))


def test_reference_names_are_the_records_vocabulary_and_no_algorithm_takes_one():
    assert tuple(CLASSICAL) == CLASSICAL_REFERENCES and REFERENCES == (*CLASSICAL_REFERENCES, SCRATCH)
    assert not set(REFERENCES) & set(algorithms.available())


def test_the_references_are_the_same_for_every_algorithm_and_served_from_the_cache(synthetic_root, monkeypatch):
    """Scratch's adaptation is computed once per batch of episodes and read back by every later run: that is
    sound only if every registered algorithm would compute the very same numbers, bit for bit, and if the cached
    answer is the computed one. A changed input (another rate) is a new key, not a stale hit."""
    import dataclasses

    from benchmark import evaluation
    from benchmark.config import resolve
    from benchmark.runner import prepare
    from tasks.episodes import stack_episodes

    answers, keys, computing = {}, set(), []
    for name in algorithms.available():
        config = resolve("smoke", algo=name, holdout="MCF7", data_root=str(synthetic_root))
        _, data, algo = prepare(config)
        batch = stack_episodes(evaluation.evaluation_episodes(config, data, "MCF7", range(3)))
        scratch = algo.init_state(algo.model.init(config.seed))
        with monkeypatch.context() as patch:
            patch.setattr(evaluation, "cache_root", lambda: __import__("pathlib").Path("/nonexistent-cache"))
            patch.setattr(evaluation, "atomic_write", lambda *args: None)
            answers[name] = evaluation.reference_scores(config, algo, scratch, batch)  # computed, not cached
        keys.add(evaluation.reference_key(config, scratch, batch))
        with monkeypatch.context() as patch:
            if answers.keys() - {name}:  # after the first algorithm, the cache must answer: computing is an error
                patch.setattr(evaluation, "scored_steps", lambda *args: pytest.fail("references computed again"))
            cached = evaluation.reference_scores(config, algo, scratch, batch)  # computed by the first, read by the rest
        assert [(m, s) for m, s, _, _ in cached] == [(m, s) for m, s, _, _ in answers[name]]
        for (_, _, iou_a, fg_a), (_, _, iou_b, fg_b) in zip(cached, answers[name]):
            assert torch.equal(iou_a, iou_b) and torch.equal(fg_a, fg_b)
    first = next(iter(answers.values()))
    assert {m for m, _, _, _ in first} == set(REFERENCES) and max(s for _, s, _, _ in first) == config.inner_steps
    for answer in answers.values():
        assert all(torch.equal(a[2], b[2]) and torch.equal(a[3], b[3]) for a, b in zip(answer, first))
    assert len(keys) == 1  # one key for every algorithm: the same inputs
    for change in ({"inner_lr": config.inner_lr / 2}, {"norm": "batch"}, {"threads": 2}):  # other references: other keys
        other = dataclasses.replace(config, **change)
        assert evaluation.reference_key(other, scratch, batch) != evaluation.reference_key(config, scratch, batch), change
