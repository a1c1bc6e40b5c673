"""Reptile (Nichol, Achiam & Schulman, 2018).

Reptile needs no query-set gradient at all. For each task i of a meta-batch it runs n plain SGD
steps from theta on the task's own data and gets adapted weights phi_i; then it moves theta toward
their mean:

    theta <- theta + epsilon * mean_i (phi_i - theta).

``theta - mean_i phi_i`` plays the role of a gradient (to first order it contains the MAML gradient
plus a term that rewards within-task generalisation), so with ``epsilon=None`` it is handed to the
outer optimiser instead, like every other algorithm's meta-gradient.

The task's data: its support and query images pooled (support first). Inner step j trains on k of
them (k = support size), taken in turn, cycling: with q = k the steps alternate support, query,
support, ... Each inner step therefore costs what a MAML inner step costs, and a meta-step costs
n passes (MAML: n + 1).
"""

from __future__ import annotations

import math

import torch

from algorithms.adaptation import sgd_step
from algorithms.base import Algorithm, MetaState
from algorithms.models import Model
from algorithms.registry import register
from tasks.batch import TaskBatch


@register("reptile")
class Reptile(Algorithm):
    """Reptile. ``epsilon``: the interpolation rate of the meta-update (a number in (0, 1]), or None to
    step the outer optimiser (``outer_optimizer``, ``outer_lr``) along ``theta - mean(phi)``; a
    non-default outer optimiser or rate together with ``epsilon`` is an error, since it would be
    ignored. Other hyper-parameters: those of :class:`algorithms.base.Algorithm`."""

    def __init__(self, model: Model, epsilon: float | None = None, **hparams):
        super().__init__(model, **hparams)
        if self.inner_steps < 1:
            raise ValueError(f"reptile: inner_steps must be >= 1 (phi - theta is 0 otherwise), got {self.inner_steps}")
        if epsilon is not None:
            if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and 0 < epsilon <= 1):
                raise ValueError(f"reptile: epsilon must be a number in (0, 1] or None, got {epsilon!r}")
            given = {k: hparams[k] for k in ("outer_optimizer", "outer_lr") if k in hparams}
            if given.get("outer_optimizer", "adam").lower() != "adam" or given.get("outer_lr", 1e-3) != 1e-3:
                raise ValueError(f"reptile: epsilon={epsilon} replaces the outer optimiser; drop {given} or set epsilon=None")
        self.epsilon = None if epsilon is None else float(epsilon)

    def hparams(self) -> dict:
        return super().hparams() | {"epsilon": self.epsilon}

    def meta_step(self, state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict[str, float]]:
        # 1. The task's data: support and query pooled; inner step j uses k images of it, in turn.
        images = torch.cat([batch.support_x, batch.query_x], dim=1)  # [T, k + q, 1, H, W]
        masks = torch.cat([batch.support_y, batch.query_y], dim=1)
        k, pooled = batch.support_x.shape[1], images.shape[1]
        picks = [torch.arange(j * k, (j + 1) * k, device=images.device) % pooled for j in range(self.adaptation.steps)]

        # 2. One task: n steps of its adaptation from theta (plain SGD by default).
        def adapted_params(params, extra, task_images, task_masks):
            fast = params
            for j, pick in enumerate(picks):
                fast, loss = self.adaptation.step(self.loss_on, fast, extra, j, task_images[pick], task_masks[pick])
            return fast, loss

        # 3. The mean adapted weights over the meta-batch.
        mean_adapted, loss = self.over_tasks(adapted_params, (state.params, state.extra), (images, masks))
        loss = self.check_finite(loss, state)

        # 4. Move theta toward them: directly, or through the outer optimiser.
        direction = {name: theta - mean_adapted[name] for name, theta in state.params.items()}  # theta - mean(phi)
        if self.epsilon is None:
            new_state = self.outer_update(state, direction)
        else:
            new_params = sgd_step(state.params, direction, self.epsilon)  # theta + eps * mean(phi - theta)
            new_state = MetaState(new_params, dict(state.extra), state.optimizer, state.step + 1)
        return new_state, {
            "loss": loss,  # mean loss of the last inner step, on its k images, before that step
            "passes": self.inner_steps,
            "images": batch.tasks * self.inner_steps * k,
        }
