"""The meta-gradients themselves: second-order MAML against finite differences and an independent
torch.autograd unroll, first-order MAML against MAML with detached inner gradients, and the vmap
path against the loop path. All in float64 on a tiny functional U-Net."""

from __future__ import annotations

import pytest
import torch

from algorithms import ModelConfig, build_model, create
from algorithms.losses import dice_loss
from tasks.batch import TaskBatch

INNER_STEPS, INNER_LR = 2, 0.4


def tiny_unet(norm: str):
    return build_model(ModelConfig(depth=1, width=2, norm=norm))


def float64_params(model, seed=0):
    return {k: v.double() for k, v in model.init(seed).items()}


def random_batch(tasks=2, k=2, q=2, size=8, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def images_and_masks(n):
        masks = (torch.rand(tasks, n, 1, size, size, generator=g, dtype=torch.float64) > 0.6).double()
        images = 0.5 * masks + 0.5 * torch.rand(tasks, n, 1, size, size, generator=g, dtype=torch.float64)
        return images, masks

    return TaskBatch(*images_and_masks(k), *images_and_masks(q))


def meta_gradient(name, model, params, batch, **hparams):
    """The gradient a meta-step follows, read back from one plain SGD step at rate 1: theta - theta'."""
    algo = create(name, model, inner_steps=INNER_STEPS, inner_lr=INNER_LR, outer_optimizer="sgd", outer_lr=1.0, **hparams)
    new_state, _ = algo.meta_step(algo.init_state(params), batch)
    return {k: params[k] - new_state.params[k] for k in params}


def unrolled_meta_loss(model, params, batch, second_order=True):
    """mean_t L_query(phi_n^t): the inner loop written directly with torch.autograd, independent of
    torch.func (``params`` must require grad). ``second_order=False`` treats each inner gradient as a
    constant (detached); the value is the same either way, only its gradient differs."""
    total = 0.0
    for t in range(batch.tasks):
        fast = dict(params)
        for _ in range(INNER_STEPS):
            support_loss = dice_loss(model.apply(fast, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(support_loss, list(fast.values()), create_graph=second_order)
            fast = {k: v - INNER_LR * g for (k, v), g in zip(fast.items(), grads)}
        total = total + dice_loss(model.apply(fast, batch.query_x[t]), batch.query_y[t])
    return total / batch.tasks


def leaves(params):
    return {k: v.clone().requires_grad_(True) for k, v in params.items()}


def autograd_meta_gradient(model, params, batch, second_order):
    theta = leaves(params)
    loss = unrolled_meta_loss(model, theta, batch, second_order=second_order)
    return dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))


def dot(a, b):
    return sum((a[k] * b[k]).sum() for k in a)


def rel_err(a, b):
    return (sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5 / sum((b[k] ** 2).sum() for k in b) ** 0.5).item()


@pytest.mark.parametrize("hparams", [{}, {"checkpoint_inner": True}], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_maml_meta_gradient_matches_central_differences(norm, hparams):
    model, batch = tiny_unet(norm), random_batch()
    params = float64_params(model)
    g = meta_gradient("maml", model, params, batch, **hparams)
    gen = torch.Generator().manual_seed(1)
    h = 1e-6
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
        norm_v = dot(direction, direction).sqrt()
        direction = {k: v / norm_v for k, v in direction.items()}
        plus = unrolled_meta_loss(model, leaves({k: params[k] + h * direction[k] for k in params}), batch, False)
        minus = unrolled_meta_loss(model, leaves({k: params[k] - h * direction[k] for k in params}), batch, False)
        finite_difference = ((plus - minus) / (2 * h)).item()
        analytic = dot(g, direction).item()
        assert abs(finite_difference - analytic) / abs(finite_difference) < 1e-4, (finite_difference, analytic)


def test_maml_meta_gradient_matches_autograd_second_order_unroll():
    model, batch = tiny_unet("group"), random_batch(tasks=3)
    params = float64_params(model)
    g = meta_gradient("maml", model, params, batch)
    assert rel_err(g, autograd_meta_gradient(model, params, batch, second_order=True)) < 1e-10


def test_fomaml_equals_maml_with_detached_inner_gradients_and_differs_from_maml():
    model, batch = tiny_unet("group"), random_batch(tasks=3)
    params = float64_params(model)
    first_order = meta_gradient("fomaml", model, params, batch)
    assert rel_err(first_order, autograd_meta_gradient(model, params, batch, second_order=False)) < 1e-10
    second_order = meta_gradient("maml", model, params, batch)
    assert rel_err(first_order, second_order) > 1e-2  # the second-order terms are not negligible here


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile"])
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_vmap_over_tasks_equals_loop(name, norm):
    model, batch = tiny_unet(norm), random_batch(tasks=3)
    params = float64_params(model)
    looped = meta_gradient(name, model, params, batch, task_batching="loop")
    batched = meta_gradient(name, model, params, batch, task_batching="vmap")
    assert rel_err(batched, looped) < 1e-12
    assert rel_err(looped, {k: torch.zeros_like(v) for k, v in looped.items()}) > 0  # a real update happened


def test_auto_task_batching_loops_on_cpu():
    model = tiny_unet("group")
    for name in ("maml", "fomaml", "reptile"):
        assert create(name, model).resolved_task_batching() == "loop"
    assert create("finetune", model).resolved_task_batching() == "pooled"
    assert create("maml", model, task_batching="vmap").resolved_task_batching() == "vmap"
