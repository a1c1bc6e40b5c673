"""maml's options against collapse (init_foreground, outer_beta2, clip_norm, multi_step_loss), each checked against
what it claims to do on a tiny float64 U-Net; off, each leaves the meta-step exactly as it was."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms import ModelConfig, build_model, create
from algorithms.losses import dice_loss
from tasks.batch import TaskBatch

STEPS, RATE = 3, 0.4


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(depth=1, width=2, norm="group"))


@pytest.fixture(scope="module")
def params(model):
    return {k: v.double() for k, v in model.init(0).items()}


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)

    def images_and_masks(n):
        masks = (torch.rand(2, n, 1, 8, 8, generator=g, dtype=torch.float64) > 0.6).double()
        return 0.5 * masks + 0.5 * torch.rand(2, n, 1, 8, 8, generator=g, dtype=torch.float64), masks

    return TaskBatch(*images_and_masks(2), *images_and_masks(2))


def maml(model, **options):
    hparams = {"inner_steps": STEPS, "inner_lr": RATE, "outer_optimizer": "sgd", "outer_lr": 1.0} | options
    return create("maml", model, **hparams)


def step_taken(algo, params, batch, step=0):
    """theta - theta' of one meta-step from ``params`` at meta-step ``step`` (with plain SGD at 1: the gradient)."""
    state = algo.init_state(params)
    state = type(state)(params=state.params, extra=state.extra, optimizer=state.optimizer, step=step)
    new_state, metrics = algo.meta_step(state, batch)
    return {k: state.params[k] - new_state.params[k] for k in params}, metrics


def test_options_off_leave_the_meta_step_unchanged(model, params, batch):
    plain, _ = step_taken(maml(model), params, batch)
    off, _ = step_taken(maml(model, init_foreground=None, outer_beta2=None, clip_norm=None, multi_step_loss=0), params, batch)
    assert all(torch.equal(plain[k], off[k]) for k in plain)


def test_init_foreground_sets_the_output_bias_to_the_prior_logit(model, params, batch):
    state = maml(model, init_foreground=0.35).init_state(params)
    assert float(state.params["head.bias"]) == pytest.approx(math.log(0.35 / 0.65))
    assert all(torch.equal(state.params[k], params[k]) for k in params if k != "head.bias")
    # a constant image: every pixel's logit is the same, and a zero head weight leaves only the bias
    flat = state.params | {"head.weight": torch.zeros_like(state.params["head.weight"])}
    fraction = torch.sigmoid(model.apply(flat, batch.query_x[0])).mean()
    assert float(fraction) == pytest.approx(0.35)


def test_clip_norm_scales_the_meta_gradient_to_that_norm(model, params, batch):
    full, _ = step_taken(maml(model), params, batch)
    norm = float(torch.sqrt(sum((g**2).sum() for g in full.values())))
    clipped, _ = step_taken(maml(model, clip_norm=norm / 4), params, batch)
    for k in full:
        torch.testing.assert_close(clipped[k], full[k] / 4)
    loose, _ = step_taken(maml(model, clip_norm=norm * 4), params, batch)
    assert all(torch.equal(loose[k], full[k]) for k in full)


def test_outer_beta2_is_adams_second_moment_memory(model, params, batch):
    gradient, _ = step_taken(maml(model), params, batch)
    algo = maml(model, outer_optimizer="adam", outer_lr=0.1, outer_beta2=0.9)
    state = algo.init_state(params)
    for _ in range(2):
        state, _ = algo.meta_step(state, batch)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    reference = torch.optim.Adam(leaves.values(), lr=0.1, betas=(0.9, 0.9))
    for _ in range(2):
        gradient, _ = step_taken(maml(model), {k: v.detach() for k, v in leaves.items()}, batch)
        for k, leaf in leaves.items():
            leaf.grad = gradient[k]
        reference.step()
    for k in params:
        torch.testing.assert_close(state.params[k], leaves[k].detach())


def test_multi_step_loss_is_the_annealed_sum_of_every_steps_query_loss(model, params, batch):
    algo = maml(model, multi_step_loss=10)
    assert algo.step_weights(0) == pytest.approx([1 / 3] * 3)
    assert algo.step_weights(5) == pytest.approx([1 / 6, 1 / 6, 2 / 3])
    assert algo.step_weights(10) == algo.step_weights(99) == [0.0, 0.0, 1.0]
    taken, metrics = step_taken(algo, params, batch, step=5)

    # the same outer loss unrolled with torch.autograd (second order), and its gradient
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    total = 0.0
    for t in range(batch.tasks):
        fast = dict(leaves)
        for weight in algo.step_weights(5):
            grads = torch.autograd.grad(dice_loss(model.apply(fast, batch.support_x[t]), batch.support_y[t]), list(fast.values()), create_graph=True)
            fast = {k: v - RATE * g for (k, v), g in zip(fast.items(), grads)}
            total = total + weight * dice_loss(model.apply(fast, batch.query_x[t]), batch.query_y[t])
    total = total / batch.tasks
    expected = torch.autograd.grad(total, list(leaves.values()))
    assert metrics["loss"] == pytest.approx(float(total.detach()))
    for k, g in zip(leaves, expected):
        torch.testing.assert_close(taken[k], g)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"init_foreground": 1.0}, "init_foreground"),
        ({"outer_beta2": 1.0}, "outer_beta2"),
        ({"outer_beta2": 0.9, "outer_optimizer": "sgd"}, "Adam-like"),
        ({"clip_norm": 0}, "clip_norm"),
        ({"multi_step_loss": -1}, "multi_step_loss"),
    ],
)
def test_bad_options_are_one_line_errors(model, options, message):
    with pytest.raises(ValueError, match=message):
        maml(model, **options)


def test_options_survive_a_checkpoint(model, params, batch, tmp_path):
    from algorithms import load_checkpoint, save_checkpoint

    algo = maml(model, init_foreground=0.3, outer_optimizer="adam", outer_beta2=0.95, clip_norm=0.5, multi_step_loss=7)
    save_checkpoint(tmp_path / "c.pt", algo, algo.init_state(params))
    loaded, _ = load_checkpoint(tmp_path / "c.pt")
    assert loaded.hparams() == algo.hparams()
    assert dict(loaded.outer.options) == {"betas": (0.9, 0.95)}
