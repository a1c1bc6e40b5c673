"""Meta-SGD (Li, Zhou, Chen & Li, 2017).

Second-order MAML whose inner rates are meta-parameters too: every weight tensor ``w`` has a rate tensor
``alpha_w`` of its shape, and the inner loop steps elementwise,

    phi_j = phi_{j-1} - alpha (*) grad L_support(phi_{j-1})         for j = 1..n,

with the same ``alpha`` at every step. The outer loss L_query(phi_n) is differentiated with respect to theta
*and* alpha (``alpha`` enters phi_n directly, so its gradient needs no second derivative, while theta's does),
and the outer optimiser steps both. The rates live in the meta-state's ``extra`` as ``lr.<parameter name>``,
start at the inner rate, and may become any real number (a negative rate ascends that coordinate's loss;
the paper leaves them unconstrained too).

Test-time adaptation steps with the learned rates (``self.adaptation`` reads them from ``extra``), so it is
the training inner loop. The meta-step itself is MAML's (:class:`algorithms.maml.MAML`, whose outer
gradient already covers ``extra``), as is the cost: one more tensor per weight in memory, the same passes.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from algorithms.adaptation import Adaptation
from algorithms.base import MetaState, Params
from algorithms.maml import MAML
from algorithms.models import Model
from algorithms.registry import register

RATE_PREFIX = "lr."


def learned_rates(extra: dict[str, Tensor], step: int) -> Params:
    """Each parameter's rate tensor from ``extra`` (the same at every step)."""
    return {name[len(RATE_PREFIX) :]: rate for name, rate in extra.items() if name.startswith(RATE_PREFIX)}


@register("meta-sgd")
class MetaSGD(MAML):
    """Meta-SGD: MAML plus a meta-learned per-parameter inner rate tensor, initialised at ``inner_lr``.
    Hyper-parameters: those of :class:`algorithms.maml.MAML`."""

    def __init__(self, model: Model, **hparams):
        super().__init__(model, **hparams)
        self.adaptation = Adaptation(steps=self.inner_steps, rate=learned_rates)

    def init_state(self, params: Params) -> MetaState:
        state = super().init_state(params)
        rates = {RATE_PREFIX + name: w.new_full(w.shape, self.inner_lr) for name, w in state.params.items()}
        return dataclasses.replace(state, extra=rates)
