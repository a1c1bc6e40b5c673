"""Validation episodes (what a run tunes on) and the adaptation rate selected on them."""

from __future__ import annotations

import pytest
import torch

from algorithms import ModelConfig, build_model, create
from benchmark.config import resolve
from benchmark.errors import RunFailed
from benchmark.validation import VAL_SPLIT, adapted_iou, select_rate, validation_batch, validation_queries
from tasks.episodes import sample_episode
from tasks.livecell import LiveCell


@pytest.fixture(scope="module")
def data(synthetic_root):
    return LiveCell(synthetic_root)


def test_validation_episodes_never_touch_the_held_out_line_or_a_test_image(data, monkeypatch):
    drawn = []
    original = sample_episode

    def spy(data_, line, split, *args):
        drawn.append((str(line), split))
        return original(data_, line, split, *args)

    monkeypatch.setattr("benchmark.validation.sample_episode", spy)
    config = resolve("smoke", holdout="MCF7", k=3)
    lines = config.training_lines
    validation_batch(data, lines, config.k, 4, 32, seed=0, count=9)
    assert {split for _, split in drawn} == {VAL_SPLIT}
    assert "MCF7" not in {line for line, _ in drawn} and len({line for line, _ in drawn}) == 7


def test_validation_queries_shrink_to_the_val_split_and_fail_in_one_line_below_k_plus_one(data):
    lines = ["A172", "BV-2"]
    val = len(data.images("A172", VAL_SPLIT))
    assert validation_queries(data, lines, k=1, wanted=99) == val - 1
    with pytest.raises(RunFailed, match="too few for k=.* support plus one query"):
        validation_queries(data, lines, k=val, wanted=2)


def test_validation_batch_is_a_function_of_seed_and_count(data):
    a = validation_batch(data, ["A172", "BV-2"], 1, 2, 32, seed=3, count=4)
    b = validation_batch(data, ["A172", "BV-2"], 1, 2, 32, seed=3, count=4)
    c = validation_batch(data, ["A172", "BV-2"], 1, 2, 32, seed=4, count=4)
    assert torch.equal(a.support_x, b.support_x) and not torch.equal(a.support_x, c.support_x)


@pytest.fixture(scope="module")
def algo_and_batch(data):
    model = build_model(ModelConfig(depth=2, width=4))
    algo = create("fomaml", model, inner_steps=2, inner_lr=0.4)
    state = algo.init_state(model.init(0))
    batch = validation_batch(data, ["A172", "BV-2", "Huh7"], 1, 2, 32, seed=0, count=3)
    return algo, state, batch


def test_the_selected_rate_is_the_best_candidate_on_validation_and_ties_go_to_the_first(algo_and_batch):
    algo, state, batch = algo_and_batch
    rates = (0.4, 0.1, 0.01)
    selection = select_rate(algo, state, batch, rates)
    by_hand = {rate: adapted_iou(algo, state, batch, algo.adaptation.with_rate(rate))[1] for rate in rates}
    assert selection.scores == pytest.approx(by_hand)
    assert selection.rate == max(rates, key=lambda r: by_hand[r]) and selection.episodes == 3
    tie = select_rate(algo, state, batch, (0.1, 0.1 + 0.0))
    assert tie.rate == 0.1
    assert select_rate(algo, state, batch, (0.2, 0.4)).rate in (0.2, 0.4)


def test_an_algorithm_with_rates_of_its_own_keeps_them(algo_and_batch):
    algo, state, batch = algo_and_batch
    algo.adaptation = algo.adaptation.with_rate((0.4, 0.2))  # a rate per step: not one number to select
    try:
        selection = select_rate(algo, state, batch, (0.4, 0.1))
    finally:
        algo.adaptation = algo.adaptation.with_rate(0.4)
    assert selection.rate is None and selection.scores == {}


def test_adapted_iou_scores_step_zero_and_the_last_step(algo_and_batch):
    algo, state, batch = algo_and_batch
    before, after = adapted_iou(algo, state, batch)
    steps = list(algo.adapt(state, batch.support_x, batch.support_y))
    from algorithms.losses import iou

    def score(params):
        logits = algo.predict(params, batch.query_x)
        return float(iou(logits.flatten(0, 1), batch.query_y.flatten(0, 1)).mean())

    assert (before, after) == pytest.approx((score(steps[0][1]), score(steps[-1][1])))
