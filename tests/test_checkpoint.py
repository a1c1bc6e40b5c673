"""Checkpoints: a saved and reloaded algorithm adapts and predicts exactly as the original, and
training resumes exactly where it stopped (optimiser state included)."""

from __future__ import annotations

import pytest
import torch

from algorithms import ModelConfig, build_model, create, load_checkpoint, save_checkpoint
from tasks.batch import TaskBatch


def random_batch(tasks=2, k=2, q=2, size=12, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, k + q, 1, size, size, generator=g)
    y = (x > 0.6).float()
    return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


@pytest.mark.parametrize(
    "name, config, hparams",
    [
        ("maml", ModelConfig(depth=1, width=2, norm="batch"), {"inner_steps": 2}),
        ("fomaml", ModelConfig(depth=2, width=2), {"inner_steps": 2, "outer_optimizer": "yogi", "loss": "bce"}),
        ("reptile", ModelConfig(depth=1, width=3, norm="none"), {"inner_steps": 2, "epsilon": 0.3}),
        ("finetune", ModelConfig(depth=1, width=2), {"inner_steps": 2, "seed": 4, "inner_lr": 0.2}),
    ],
)
def test_round_trip_gives_identical_adaptation_and_resumed_training(tmp_path, name, config, hparams):
    model = build_model(config)
    algo = create(name, model, **hparams)
    state = algo.init_state(model.init(3))
    for step in range(2):
        state, _ = algo.meta_step(state, random_batch(seed=step))
    path = tmp_path / "nested" / "ckpt.pt"
    save_checkpoint(path, algo, state)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left behind

    loaded_algo, loaded = load_checkpoint(path)
    assert loaded_algo.name == name and loaded_algo.hparams() == algo.hparams()
    assert loaded_algo.model.config == config and loaded.step == 2

    episodes = random_batch(tasks=3, seed=10)
    for (i, a), (j, b) in zip(
        algo.adapt(state, episodes.support_x, episodes.support_y),
        loaded_algo.adapt(loaded, episodes.support_x, episodes.support_y),
        strict=True,
    ):
        assert i == j
        assert torch.equal(algo.predict(a, episodes.query_x), loaded_algo.predict(b, episodes.query_x))

    resumed, _ = loaded_algo.meta_step(loaded, random_batch(seed=2))
    continued, _ = algo.meta_step(state, random_batch(seed=2))
    assert all(torch.equal(resumed.params[k], continued.params[k]) for k in continued.params)


def test_overwrite_replaces_the_file_atomically(tmp_path):
    model = build_model(ModelConfig(depth=1, width=2))
    algo = create("fomaml", model, inner_steps=1)
    state = algo.init_state(model.init(0))
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, algo, state)
    later, _ = algo.meta_step(state, random_batch())
    save_checkpoint(path, algo, later)
    assert load_checkpoint(path)[1].step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not a readable checkpoint") as err:
        load_checkpoint(garbage)
    assert "\n" not in str(err.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt: not a fewshot-cellseg-checkpoint/1 checkpoint"):
        load_checkpoint(foreign)
