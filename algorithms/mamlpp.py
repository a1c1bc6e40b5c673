"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", 2019).

MAML (see :mod:`algorithms.maml`) with the paper's changes that stabilise its training, each a function of the
meta-step s, so a meta-step stays a function of (state, batch) and a resumed run equals an uninterrupted one:

- Multi-step loss. The outer loss is a weighted sum of the query loss after *every* inner step,
  ``sum_j w_j(s) L_query(phi_j)``, j = 1..n, so early steps get a gradient signal too. The weights start
  uniform (1/n each) and anneal linearly, over ``multi_step_loss_steps`` meta-steps, to the last step alone
  (then it is MAML's loss): ``w_j = (1/n) max(0, 1 - s/A)`` for j < n and the last takes the rest.
- Per-layer per-step learned inner rates (LSLR). Each parameter tensor has one rate per inner step, a
  meta-parameter in the meta-state's ``extra`` (``lr.<name>``, shape [n]) that starts at the inner rate and
  is stepped by the outer optimiser with theta; step j adapts with rates ``lr.<name>[j]``.
- Derivative-order annealing. The first ``first_order_steps`` meta-steps treat the inner gradients as constants
  (first order, as ``fomaml``; the rates still get their gradient, which needs no second derivative); after
  them, second order (as ``maml``).
- Cosine-annealed outer rate: ``min_outer_lr + (outer_lr - min_outer_lr) (1 + cos(pi s / S)) / 2`` at meta-step
  s of S = ``meta_steps`` (the run's length; the runner sets it), ``min_outer_lr`` after S. The schedule's
  state is the meta-step count, which the meta-state (and so the checkpoint) holds; the rate of the last
  update is in the saved optimiser state too.

Left out: the paper's per-step batch-normalisation statistics and affine parameters. Its point is the running
statistics a network keeps per inner step for use at test time; the models here keep none (``norm="batch"``
normalises every batch with its own statistics, in training and at test time alike), so there are no
statistics to keep per step, and per-step affine parameters would need the model to take the step index.

Test-time adaptation steps with the learned per-step rates (``self.adaptation`` reads them from ``extra``).
Cost: second order as MAML once ``first_order_steps`` have passed; while the multi-step loss anneals, one
more query pass per inner step (the ``passes`` metric counts them).
"""

from __future__ import annotations

import dataclasses
import math

from torch import Tensor

from algorithms.adaptation import Adaptation
from algorithms.base import Algorithm, MetaState, Params
from algorithms.maml import multi_step_weights
from algorithms.models import Model
from algorithms.registry import register
from tasks.batch import TaskBatch

RATE_PREFIX = "lr."


def per_step_rates(extra: dict[str, Tensor], step: int) -> Params:
    """Each parameter's rate for inner step ``step``, from its per-step rates in ``extra``."""
    return {name[len(RATE_PREFIX) :]: rates[step] for name, rates in extra.items() if name.startswith(RATE_PREFIX)}


@register("maml++")
class MAMLPlusPlus(Algorithm):
    """MAML++. ``multi_step_loss_steps``: meta-steps over which the multi-step loss anneals to the last step's
    (0: the last step's only, from the start). ``first_order_steps``: meta-steps of first-order meta-gradients
    before second order. ``min_outer_lr``: where the cosine outer rate ends. ``meta_steps``: the meta-steps the
    cosine spans (the runner sets the run's). Other hyper-parameters: those of :class:`algorithms.base.Algorithm`."""

    second_order = True

    def __init__(
        self,
        model: Model,
        multi_step_loss_steps: int = 15,
        first_order_steps: int = 30,
        min_outer_lr: float = 0.0,
        meta_steps: int = 100,
        **hparams,
    ):
        super().__init__(model, **hparams)
        if self.inner_steps < 1:
            raise ValueError(f"maml++: inner_steps must be >= 1 (it learns a rate per inner step), got {self.inner_steps}")
        for label, value, least in (
            ("multi_step_loss_steps", multi_step_loss_steps, 0),
            ("first_order_steps", first_order_steps, 0),
            ("meta_steps", meta_steps, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"maml++: {label} must be an integer >= {least}, got {value!r}")
        if isinstance(min_outer_lr, bool) or not (isinstance(min_outer_lr, (int, float)) and 0 <= min_outer_lr <= self.outer_lr):
            raise ValueError(f"maml++: min_outer_lr must be a number in [0, outer_lr = {self.outer_lr}], got {min_outer_lr!r}")
        self.multi_step_loss_steps = multi_step_loss_steps
        self.first_order_steps = first_order_steps
        self.min_outer_lr = float(min_outer_lr)
        self.meta_steps = meta_steps
        self.adaptation = Adaptation(steps=self.inner_steps, rate=per_step_rates)

    def hparams(self) -> dict:
        return super().hparams() | {
            "multi_step_loss_steps": self.multi_step_loss_steps,
            "first_order_steps": self.first_order_steps,
            "min_outer_lr": self.min_outer_lr,
            "meta_steps": self.meta_steps,
        }

    def init_state(self, params: Params) -> MetaState:
        state = super().init_state(params)
        steps = self.inner_steps
        rates = {RATE_PREFIX + name: w.new_full((steps,), self.inner_lr) for name, w in state.params.items()}
        return dataclasses.replace(state, extra=rates)

    # -- the schedules, functions of the meta-step s ----------------------------------------------------

    def loss_weights(self, s: int) -> list[float]:
        """The multi-step loss's weight of the query loss after inner steps 1..n at meta-step ``s``."""
        return multi_step_weights(self.inner_steps, self.multi_step_loss_steps, s)

    def outer_rate(self, s: int) -> float:
        """The cosine-annealed outer rate of meta-step ``s``."""
        progress = min(s, self.meta_steps) / self.meta_steps
        return self.min_outer_lr + (self.outer_lr - self.min_outer_lr) * (1 + math.cos(math.pi * progress)) / 2

    # -- a meta-step -----------------------------------------------------------------------------------

    def meta_step(self, state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict[str, float]]:
        weights = self.loss_weights(state.step)
        second_order = state.step >= self.first_order_steps

        # 1. One task's outer loss: the weighted query losses after each inner step, as a function of theta and
        #    the per-step rates. First order: each inner gradient is a constant (no graph through it).
        def multi_step_query_loss(params, extra, support_x, support_y, query_x, query_y):
            fast, loss = params, 0.0
            for j, weight in enumerate(weights):
                fast, _ = self.adaptation.step(self.loss_on, fast, extra, j, support_x, support_y, create_graph=second_order)
                if weight:
                    loss = loss + weight * self.loss_on(fast, query_x, query_y)
            return loss

        # 2. Its gradient w.r.t. (params, rates), averaged over the tasks of the meta-batch.
        grad_params, grad_extra, loss = self.meta_gradient(multi_step_query_loss, state, tuple(batch))

        # 3. One step of the outer optimiser at this meta-step's cosine rate.
        loss = self.check_finite(loss, state)
        outer = dataclasses.replace(self.outer, lr=self.outer_rate(state.step))
        new_state = outer.update(state, grad_params, grad_extra)
        tasks, k, q = batch.tasks, batch.support_x.shape[1], batch.query_x.shape[1]
        query_passes = sum(1 for weight in weights if weight)
        return new_state, {
            "loss": loss,  # the multi-step loss before this update (the last step's query loss once annealed)
            "passes": self.inner_steps + query_passes,  # n inner (second order: each differentiated twice) + query
            "images": tasks * (self.inner_steps * k + query_passes * q),
        }
