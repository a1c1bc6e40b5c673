"""Batching over tasks and second-order memory: loop == vmap == chunked vmap, checkpointed MAML ==
plain MAML, the "auto" rule, and the settings that are refused."""

from __future__ import annotations

import pytest
import torch

from algorithms import ModelConfig, build_model, create
from algorithms.batching import saved_megabytes
from tasks.batch import TaskBatch

INNER_STEPS = 2


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(depth=1, width=2, norm="group"))


def random_batch(tasks=3, k=2, q=2, size=8, seed=0, dtype=torch.float64) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def images_and_masks(n):
        masks = (torch.rand(tasks, n, 1, size, size, generator=g, dtype=dtype) > 0.6).to(dtype)
        return 0.5 * masks + 0.5 * torch.rand(tasks, n, 1, size, size, generator=g, dtype=dtype), masks

    return TaskBatch(*images_and_masks(k), *images_and_masks(q))


def meta_gradient(name, model, batch, seed=0, **hparams):
    """theta - theta' after one plain SGD step at rate 1: the gradient the meta-step follows."""
    params = {k: v.to(batch.support_x.dtype) for k, v in model.init(seed).items()}
    algo = create(name, model, inner_steps=INNER_STEPS, outer_optimizer="sgd", outer_lr=1.0, **hparams)
    new_state, _ = algo.meta_step(algo.init_state(params), batch)
    return {k: params[k] - new_state.params[k] for k in params}


def rel_err(a, b):
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5 / sum((b[k] ** 2).sum() for k in b) ** 0.5)


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile"])
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_chunked_vmap_equals_loop_and_full_vmap(name, norm):
    model, batch = build_model(ModelConfig(depth=1, width=2, norm=norm)), random_batch(tasks=5)
    looped = meta_gradient(name, model, batch, task_batching="loop")
    assert rel_err(looped, {k: torch.zeros_like(v) for k, v in looped.items()}) > 0
    for batching in ("vmap", 2, "3", 1, 7):  # chunks of 2 (2+2+1), 3 (3+2), 1, more than T
        assert rel_err(meta_gradient(name, model, batch, task_batching=batching), looped) < 1e-12, batching


@pytest.mark.parametrize("checkpoint_inner", [True, 1])  # all, or the first of INNER_STEPS = 2
def test_checkpointed_maml_gradient_equals_plain_bit_for_bit(model, checkpoint_inner):
    batch = random_batch(tasks=3)
    plain = meta_gradient("maml", model, batch, task_batching="loop")
    checkpointed = meta_gradient("maml", model, batch, checkpoint_inner=checkpoint_inner)
    assert all(torch.equal(plain[k], checkpointed[k]) for k in plain)


def saved_by_meta_step(algo, state, batch) -> float:
    """MB of tensors the meta-step's autograd graph saves outside checkpointed regions."""
    return saved_megabytes(lambda: algo.meta_step(state, batch))


def test_checkpointed_maml_keeps_about_one_inner_step_of_activations():
    model = build_model(ModelConfig(depth=2, width=4))
    batch = random_batch(tasks=1, k=2, q=2, size=32, dtype=torch.float32)
    kept = {}
    for n in (2, 6):
        for checkpoint_inner in (False, True):
            algo = create("maml", model, inner_steps=n, checkpoint_inner=checkpoint_inner)
            kept[n, checkpoint_inner] = saved_by_meta_step(algo, algo.init_state(model.init(0)), batch)
    assert kept[6, False] > 2.5 * kept[2, False]  # plain: grows with n
    assert kept[6, True] < 1.2 * kept[2, True]  # checkpointed: flat in n
    assert kept[6, True] < 0.3 * kept[6, False]


def test_partly_checkpointed_maml_keeps_the_uncheckpointed_steps():
    """checkpoint_inner=c recomputes the first c steps: what the graph keeps falls with c, from plain to all."""
    model = build_model(ModelConfig(depth=2, width=4))
    batch = random_batch(tasks=1, k=2, q=2, size=32, dtype=torch.float32)
    kept = []
    for c in (0, 2, 4, 6):
        algo = create("maml", model, inner_steps=6, checkpoint_inner=c)
        kept.append(saved_by_meta_step(algo, algo.init_state(model.init(0)), batch))
    plain, *partial = kept
    per_step = (plain - kept[-1]) / 6
    assert kept == sorted(kept, reverse=True) and per_step > 0
    for c, megabytes in zip((2, 4), partial):
        assert megabytes == pytest.approx(plain - c * per_step, rel=0.15)


def test_auto_rule(model):
    batch = random_batch(tasks=6, dtype=torch.float32)
    maml, fomaml = create("maml", model), create("fomaml", model)
    for algo in (maml, fomaml):  # CPU: loop
        assert algo.resolved_task_batching(tuple(batch)) == "loop" and algo.task_chunk(tuple(batch)) is None
    elsewhere = tuple(batch.to("meta"))  # an accelerator: first order vmaps every task
    assert fomaml.resolved_task_batching(elsewhere) == "vmap" and fomaml.task_chunk(elsewhere) == 6
    per_task_mb = 2.3 * maml.inner_steps * maml._inner_step_graph_mb(tuple(batch))
    assert maml._inner_step_graph_mb(tuple(random_batch(tasks=1, size=16, dtype=torch.float32))) > 3 * maml._inner_step_graph_mb(tuple(batch))
    assert maml.chunk_that_fits(tuple(batch), 3.5 * per_task_mb) == 3
    assert maml.chunk_that_fits(tuple(batch), 1.5 * per_task_mb) == "loop"
    assert create("maml", model, task_batching=4).resolved_task_batching(tuple(batch)) == "chunks of 4"
    assert create("maml", model, task_batching="4").task_chunk(tuple(batch)) == 4
    assert create("maml", model, task_batching=9).resolved_task_batching(tuple(batch)) == "vmap"
    assert create("maml", model, checkpoint_inner=True).task_chunk(tuple(batch)) is None


@pytest.mark.parametrize(
    "name, hparams, message",
    [
        ("maml", {"task_batching": 0}, "task_batching must be one of loop, vmap, auto or a chunk size"),
        ("maml", {"task_batching": "2.5"}, "task_batching must be one of"),
        ("maml", {"checkpoint_inner": "yes"}, "checkpoint_inner must be true, false or a number of inner steps 0..10"),
        ("maml", {"checkpoint_inner": 11}, "checkpoint_inner must be true, false or a number of inner steps 0..10"),
        ("maml", {"checkpoint_inner": True, "task_batching": "vmap"}, "checkpoint_inner=True needs task_batching loop or auto"),
        ("maml", {"checkpoint_inner": 3, "task_batching": 2}, "checkpoint_inner=3 needs task_batching loop or auto"),
        ("finetune", {"task_batching": "loop"}, "finetune: task_batching must be auto"),
    ],
)
def test_refused_settings_are_one_line_errors(model, name, hparams, message):
    with pytest.raises(ValueError, match=message) as err:
        create(name, model, **hparams)
    assert "\n" not in str(err.value)
