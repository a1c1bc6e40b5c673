"""The ``higher`` comparison: second-order MAML as the textbook ``higher.innerloop_ctx`` loop computes it, to time
ours against and to check our meta-gradient with."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from algorithms import Algorithm, MetaState
from algorithms.state import Params
from tasks.batch import TaskBatch


class FunctionalNet(nn.Module):
    """A functional model as an ``nn.Module`` that holds its parameters: the form ``higher`` patches.

    Parameters are registered as ``p0, p1, ...`` (module attribute names cannot contain dots) and handed
    back to the pure ``apply`` under their own names, so the network is the same function as the model's.
    """

    def __init__(self, apply: Callable[[Params, Tensor], Tensor], params: Params):
        super().__init__()
        self.functional = apply
        self.names = list(params)
        for i, value in enumerate(params.values()):
            self.register_parameter(f"p{i}", nn.Parameter(value.detach().clone()))

    def forward(self, x: Tensor) -> Tensor:
        return self.functional({name: self._parameters[f"p{i}"] for i, name in enumerate(self.names)}, x)


def higher_meta_gradient(algo: Algorithm, params: Params, batch: TaskBatch) -> tuple[Params, float]:
    """Second-order MAML's meta-gradient and mean query loss, computed with ``higher.innerloop_ctx``.

    The textbook ``higher`` loop: per task, n differentiable SGD steps at ``algo.inner_lr`` on the support
    loss, then the query loss divided by T, back-propagated into the shared initial weights.
    """
    import higher  # the benchmark extra; only --compare-higher needs it

    net = FunctionalNet(algo.model.apply, params)
    inner = torch.optim.SGD(net.parameters(), lr=algo.inner_lr)
    tasks, total = batch.tasks, 0.0
    for t in range(tasks):
        with higher.innerloop_ctx(net, inner, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(algo.inner_steps):
                diffopt.step(algo.loss_fn(fnet(batch.support_x[t]), batch.support_y[t]))
            loss = algo.loss_fn(fnet(batch.query_x[t]), batch.query_y[t]) / tasks
            loss.backward()
            total += float(loss.detach())
    return {name: p.grad for name, p in zip(net.names, net.parameters())}, total


def higher_meta_step(algo: Algorithm, state: MetaState, batch: TaskBatch) -> MetaState:
    """One second-order MAML meta-step through ``higher``, with the same outer update as ``algo``."""
    grads, _ = higher_meta_gradient(algo, state.params, batch)
    return algo.outer_update(state, grads)


def meta_gradient(algo: Algorithm, state: MetaState, batch: TaskBatch) -> Params:
    """The gradient ``algo.meta_step`` hands its outer optimiser (captured; the update itself is skipped)."""
    captured: Params = {}
    probe = copy.copy(algo)

    def capture(state: MetaState, grad_params: Params, grad_extra: Params | None = None) -> MetaState:
        captured.update(grad_params)
        return state

    probe.outer_update = capture
    probe.meta_step(state, batch)
    if not captured:
        raise ValueError(f"{algo.name}: its meta-step does not step an outer optimiser along a meta-gradient")
    return captured


def gradient_agreement(ours: Params, theirs: Params) -> dict[str, Any]:
    """How far two gradients are apart: max |difference|, max |gradient|, and whether they are bitwise equal."""
    diff = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    scale = max(float(g.abs().max()) for g in ours.values())
    return {
        "max_abs_diff": diff,
        "max_abs_grad": scale,
        "relative": diff / scale if scale else 0.0,
        "bitwise_equal": all(torch.equal(ours[k], theirs[k]) for k in ours),
    }
