"""The interface every algorithm implements.

An algorithm is a small object holding hyper-parameters and the model's pure functions; everything
that changes during training lives in a :class:`MetaState` that ``meta_step`` takes and returns, so a
meta-step is a function of (state, batch) and a checkpoint is just the state plus the hyper-parameters.

Its parts, each in its own module, so each algorithm's own file reads as the algorithm and nothing else:

- ``self.adaptation`` (:mod:`algorithms.adaptation`): its inner loop (which parameters adapt, at what
  rates, how many steps), used by its training inner loop and by test-time ``adapt`` alike;
- ``over_tasks`` / ``meta_gradient`` (:mod:`algorithms.batching`): a per-task function run over a
  meta-batch, looped or ``vmap``'d as ``task_batching`` says, and its gradient w.r.t. the meta-parameters;
- ``outer_update`` (:mod:`algorithms.optim`): one step of the outer optimiser, whose state travels in the
  MetaState.

Cost unit. Metrics report ``passes``: forward-backward passes over one image set of the whole
meta-batch (the T support sets, or the T query sets, batched or looped: one pass either way). This is
the unit ``B`` of the ``bench`` command: first-order MAML costs ``n + 1`` passes per meta-step.
``images`` counts the images those passes saw.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator
from typing import ClassVar

import torch
from torch import Tensor
from torch.func import vmap

from algorithms import batching
from algorithms.adaptation import Adaptation
from algorithms.losses import get_loss
from algorithms.models import Model
from algorithms.optim import OuterOptimizer, optimizer_class
from algorithms.state import MetaState, Params
from tasks.batch import TaskBatch

__all__ = ["Algorithm", "MetaState", "Params"]


class Algorithm(abc.ABC):
    """A gradient-based meta-learner. Subclasses set ``name`` (via ``@register``) and ``meta_step``.

    Hyper-parameters shared by all: ``loss`` (name in ``algorithms.losses``), ``inner_steps`` n and
    ``inner_lr`` alpha (the shared default adaptation: every parameter, n plain steps at alpha; a subclass
    that adapts otherwise replaces ``self.adaptation`` in its constructor), ``outer_optimizer`` and
    ``outer_lr`` (the meta-update), ``task_batching`` (see :data:`algorithms.batching.TASK_BATCHING`).
    """

    name: ClassVar[str]
    second_order: ClassVar[bool] = False  # "auto" task batching budgets vmap's memory on accelerators when True
    trains_by_adaptation: ClassVar[bool] = True  # its training inner loop steps with self.adaptation (tested)

    def __init__(
        self,
        model: Model,
        loss: str = "dice",
        inner_steps: int = 10,
        inner_lr: float = 0.4,
        outer_optimizer: str = "adam",
        outer_lr: float = 1e-3,
        task_batching: str | int = "auto",
    ):
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"{self.name}: inner_steps must be an integer >= 0, got {inner_steps!r}")
        for label, value in (("inner_lr", inner_lr), ("outer_lr", outer_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.name}: {label} must be a finite number >= 0, got {value!r}")
        self.model = model
        self.loss = loss
        self.loss_fn = get_loss(loss)
        self.inner_steps = inner_steps
        self.inner_lr = float(inner_lr)
        self.adaptation = Adaptation(steps=inner_steps, rate=self.inner_lr)
        self.outer_optimizer = outer_optimizer
        self.outer_lr = float(outer_lr)
        self.outer = OuterOptimizer(optimizer_class(outer_optimizer), self.outer_lr)
        self.task_batching = batching.parse_task_batching(task_batching, self.name)

    def hparams(self) -> dict:
        """Everything besides the model needed to rebuild this algorithm with ``registry.create``."""
        return {
            "loss": self.loss,
            "inner_steps": self.inner_steps,
            "inner_lr": self.inner_lr,
            "outer_optimizer": self.outer_optimizer,
            "outer_lr": self.outer_lr,
            "task_batching": self.task_batching,
        }

    # -- meta-training ------------------------------------------------------------------------

    def init_state(self, params: Params) -> MetaState:
        return MetaState(params={k: v.detach().clone() for k, v in params.items()}, extra={}, optimizer={}, step=0)

    @abc.abstractmethod
    def meta_step(self, state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict[str, float]]:
        """One meta-update from a batch of tasks. Returns the new state (the old one is left untouched)
        and metrics, at least ``loss`` and ``passes``."""

    def loss_on(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """The training loss of the model with ``params`` on images ``x`` [B,1,H,W] and masks ``y``."""
        return self.loss_fn(self.model.apply(params, x), y)

    def over_tasks(self, fn: Callable, shared: tuple, per_task: tuple[Tensor, ...]):
        """``batching.over_tasks`` with this algorithm's task batching."""
        return batching.over_tasks(fn, shared, per_task, self.task_chunk(per_task))

    def meta_gradient(self, task_loss: Callable, state: MetaState, per_task: tuple[Tensor, ...]):
        """``batching.meta_gradient`` of ``task_loss`` at ``state`` with this algorithm's task batching."""
        return batching.meta_gradient(task_loss, state.params, state.extra, per_task, self.task_chunk(per_task))

    def outer_update(self, state: MetaState, grad_params: Params, grad_extra: dict[str, Tensor] | None = None) -> MetaState:
        """One step of the outer optimiser along the meta-gradient; returns the next state."""
        return self.outer.update(state, grad_params, grad_extra)

    def check_finite(self, loss: Tensor, state: MetaState) -> float:
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.name}: loss is {value} at meta-step {state.step}; lower the learning rates?")
        return value

    # -- task batching (see algorithms.batching.TASK_BATCHING) --------------------------------------

    def task_chunk(self, per_task: tuple[Tensor, ...]) -> int | None:
        """Tasks per ``vmap`` call for these tasks (``per_task``: tensors with the task axis first), or
        None to loop over them with plain autograd."""
        choice = self._auto_task_batching(per_task) if self.task_batching == "auto" else self.task_batching
        if choice == "loop":
            return None
        tasks = per_task[0].shape[0]
        return tasks if choice == "vmap" else min(choice, tasks)

    def resolved_task_batching(self, per_task: tuple[Tensor, ...] | None = None) -> str:
        """``task_batching`` in words for these tasks (without them: for tasks on the CPU): ``"loop"``,
        ``"vmap"`` or ``"chunks of c"``."""
        choice = self._auto_task_batching(per_task) if self.task_batching == "auto" else self.task_batching
        if isinstance(choice, int):
            return "vmap" if per_task is not None and choice >= per_task[0].shape[0] else f"chunks of {choice}"
        return choice

    def _auto_task_batching(self, per_task: tuple[Tensor, ...] | None) -> str | int:
        if per_task is None or per_task[0].device.type == "cpu":
            return "loop"
        if not self.second_order:
            return "vmap"
        return self.chunk_that_fits(per_task, batching.TASK_MEMORY_BUDGET_MB)

    def chunk_that_fits(self, per_task: tuple[Tensor, ...], budget_mb: float) -> str | int:
        """Second order: the most tasks per vmap call whose graphs fit in ``budget_mb``, ``"loop"`` when
        fewer than 2 fit."""
        per_task_mb = batching.SECOND_ORDER_VMAP_FACTOR * self.adaptation.steps * self._inner_step_graph_mb(per_task)
        chunk = int(budget_mb // max(per_task_mb, 1e-9))
        return "loop" if chunk < 2 else chunk

    def _inner_step_graph_mb(self, per_task: tuple[Tensor, ...]) -> float:
        """MB one differentiable inner step on one task's support set keeps for the outer backward pass,
        counted once per input shape with a saved-tensor hook."""
        support_x, support_y = per_task[0][0], per_task[1][0]
        key = (tuple(support_x.shape), support_x.dtype, str(support_x.device))
        cache = self.__dict__.setdefault("_graph_mb", {})
        if key not in cache:
            state = self.init_state({k: v.to(support_x.device) for k, v in self.model.init(0).items()})
            cache[key] = batching.saved_megabytes(
                lambda: self.adaptation.step(self.loss_on, state.params, state.extra, 0, support_x, support_y, create_graph=True)
            )
        return cache[key]

    # -- test-time adaptation: the algorithm's own inner loop ------------------------------------

    def adapt(
        self, state: MetaState, support_x: Tensor, support_y: Tensor, adaptation: Adaptation | None = None
    ) -> Iterator[tuple[int, Params]]:
        """Adapt to E episodes at once: ``support_x``/``support_y`` [E, k, 1, H, W].

        Yields ``(i, params)`` for i = 0..n, where ``params`` (leading dim E) are the weights after i steps
        of ``adaptation`` (default: ``self.adaptation``, the inner loop this algorithm trains with) on the
        support loss. First-order, no graph kept: each step's gradient is computed and dropped.
        """
        adaptation = self.adaptation if adaptation is None else adaptation
        episodes = support_x.shape[0]
        theta = {k: v.detach() for k, v in state.params.items()}
        yield 0, {k: v.expand(episodes, *v.shape) for k, v in theta.items()}

        # The first step starts every episode from the same theta: unbatched weights (in_dims None) give
        # plain kernels over all E x k images instead of E-group convolutions.
        fast, params_dim = theta, None
        for i in range(adaptation.steps):

            def one_step(params: Params, x: Tensor, y: Tensor, i: int = i) -> tuple[Params, Tensor]:
                return adaptation.step(self.loss_on, params, state.extra, i, x, y)

            fast, losses = vmap(one_step, in_dims=(params_dim, 0, 0))(fast, support_x, support_y)
            params_dim = 0
            if not bool(torch.isfinite(losses).all()):
                raise FloatingPointError(f"{self.name}: support loss is {losses.tolist()} at adaptation step {i + 1}")
            yield i + 1, fast

    def predict(self, params: Params, query_x: Tensor) -> Tensor:
        """Logits [E, q, 1, H, W] of each episode's adapted ``params`` (leading dim E) on its queries."""
        # Weights that are one tensor expanded over episodes (step 0 of ``adapt``) run unbatched.
        shared = all(v.dim() > 0 and v.stride(0) == 0 for v in params.values())
        with torch.no_grad():
            if shared:
                return vmap(self.model.apply, in_dims=(None, 0))({k: v[0] for k, v in params.items()}, query_x)
            return vmap(self.model.apply)(params, query_x)
