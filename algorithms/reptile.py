"""Reptile (Nichol, Achiam & Schulman, 2018).

Reptile needs no query-set gradient at all. For each task i of a meta-batch it runs n plain SGD
steps from theta on the task's own data and gets adapted weights phi_i; then it moves theta toward
their mean:

    theta <- theta + epsilon * mean_i (phi_i - theta).

``theta - mean_i phi_i`` plays the role of a gradient (to first order it contains the MAML gradient
plus a term that rewards within-task generalisation), so it is handed to the outer optimiser like every
other algorithm's meta-gradient. The interpolation above is that with plain SGD at rate epsilon, which
is what ``epsilon`` sets.

The task's data: its support and query images pooled (support first). Inner step j trains on k of
them (k = support size), taken in turn, cycling: with q = k the steps alternate support, query,
support, ... Each inner step therefore costs what a MAML inner step costs, and a meta-step costs
n passes (MAML: n + 1).
"""

from __future__ import annotations

import math

import torch

from algorithms.base import Algorithm, MetaState
from algorithms.models import Model
from algorithms.registry import register
from tasks.batch import TaskBatch


@register("reptile")
class Reptile(Algorithm):
    """Reptile. ``epsilon``: the interpolation rate of the classic meta-update (a number in (0, 1]): it
    replaces the outer optimiser and rate (whatever a preset set) by plain SGD at rate epsilon, which
    :meth:`hparams` then reports. None (the default) steps ``outer_optimizer`` at ``outer_lr`` along
    ``theta - mean(phi)``. Other hyper-parameters: those of :class:`algorithms.base.Algorithm`."""

    def __init__(self, model: Model, epsilon: float | None = None, **hparams):
        if epsilon is not None:
            if not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool) and math.isfinite(epsilon) and 0 < epsilon <= 1):
                raise ValueError(f"reptile: epsilon must be a number in (0, 1] or None, got {epsilon!r}")
            hparams = {**hparams, "outer_optimizer": "sgd", "outer_lr": float(epsilon)}
        super().__init__(model, **hparams)
        if self.inner_steps < 1:
            raise ValueError(f"reptile: inner_steps must be >= 1 (phi - theta is 0 otherwise), got {self.inner_steps}")
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

        # 4. Move theta toward them through the outer optimiser (with epsilon: theta + eps * mean(phi - theta)).
        direction = {name: theta - mean_adapted[name] for name, theta in state.params.items()}  # theta - mean(phi)
        return self.outer_update(state, direction), {
            "loss": loss,  # mean loss of the last inner step, on its k images, before that step
            "passes": self.inner_steps,
            "images": batch.tasks * self.inner_steps * k,
        }
