"""How weights adapt to a task: which parameters move, at what rate, for how many steps.

An :class:`Adaptation` is one algorithm's inner loop, written down once. The algorithm's training
inner loop steps with it (``Adaptation.step``) and test-time adaptation (``Algorithm.adapt``) steps
with the same object, so an algorithm adapts at test time as it was trained, by construction. The
shared default, ``Adaptation(steps=n, rate=alpha)``, is the seed study's protocol: every parameter,
n plain gradient steps at the inner rate. An algorithm specialises it (only the head adapts, rates
learned per parameter or per step); the runner may override it for evaluation (``with_rate``: a rate
selected on validation data).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from algorithms.gradients import grad_and_loss
from algorithms.state import Params

Rate = float | Tensor | Params
"""One step's rate: a number, one tensor for every parameter, or one tensor per parameter (by name)."""

RateSchedule = float | tuple[float, ...] | Callable[[dict[str, Tensor], int], Rate]
"""The rate of every step: one number for all; one number per step; or ``rate(extra, step)``, which reads
meta-learned rates from the meta-state's ``extra`` tensors (Meta-SGD, MAML++)."""


def sgd_step(params: Params, grads: Params, rate: Rate) -> Params:
    """One plain gradient step ``p - rate * g`` on every parameter of ``params``."""
    if isinstance(rate, dict):
        return {name: p - rate[name] * grads[name] for name, p in params.items()}
    return {name: p - rate * grads[name] for name, p in params.items()}


@dataclass(frozen=True)
class Adaptation:
    """``steps`` plain gradient steps on a task's loss at the rates of ``rate`` (see :data:`RateSchedule`),
    moving the parameters named in ``parameters`` (a name, or a dotted prefix such as ``"head"`` for
    ``head.weight`` and ``head.bias``), or every parameter when it is None; the others stay as they are."""

    steps: int
    rate: RateSchedule
    parameters: tuple[str, ...] | None = None

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"adaptation steps must be an integer >= 0, got {self.steps!r}")
        if not callable(self.rate):
            rates = self.rate if isinstance(self.rate, tuple) else (self.rate,)
            if isinstance(self.rate, tuple) and len(self.rate) != self.steps:
                raise ValueError(f"a rate per step needs {self.steps} rates, got {len(self.rate)}")
            for rate in rates:
                if isinstance(rate, bool) or not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate >= 0):
                    raise ValueError(f"an adaptation rate must be a finite number >= 0 or rate(extra, step), got {rate!r}")
        if self.parameters is not None and (isinstance(self.parameters, str) or not self.parameters):
            raise ValueError(f"adapted parameters must be a non-empty tuple of names or None, got {self.parameters!r}")

    def with_rate(self, rate: RateSchedule) -> Adaptation:
        """The same adaptation at another rate (e.g. one selected on validation data)."""
        return dataclasses.replace(self, rate=rate)

    def rate_at(self, extra: dict[str, Tensor], step: int) -> Rate:
        """The rate of step ``step`` (0-based)."""
        if isinstance(self.rate, tuple):
            return self.rate[step]
        return self.rate(extra, step) if callable(self.rate) else self.rate

    def adapts(self, name: str) -> bool:
        """Whether parameter ``name`` moves."""
        return self.parameters is None or any(name == p or name.startswith(p + ".") for p in self.parameters)

    def step(
        self,
        loss_on: Callable[[Params, Tensor, Tensor], Tensor],
        params: Params,
        extra: dict[str, Tensor],
        step: int,
        x: Tensor,
        y: Tensor,
        create_graph: bool = False,
    ) -> tuple[Params, Tensor]:
        """Step ``step`` from ``params`` on ``loss_on(params, x, y)``: ``(new params, loss before the step)``.

        Only the adapted parameters are differentiated (the others are constants of the loss here, though
        an outer derivative still sees them). ``create_graph``: the step stays differentiable with respect
        to ``params`` (second order; see :func:`algorithms.gradients.grad_and_loss`)."""
        moving = params if self.parameters is None else {k: v for k, v in params.items() if self.adapts(k)}
        if not moving:
            raise ValueError(f"no parameter matches the adapted parameters {self.parameters}")

        def loss_of_moving(moved: Params, x: Tensor, y: Tensor) -> Tensor:
            return loss_on(params | moved, x, y)

        grads, loss = grad_and_loss(loss_of_moving, moving, x, y, create_graph=create_graph)
        return params | sgd_step(moving, grads, self.rate_at(extra, step)), loss
