"""The interface every algorithm implements, and the few pieces they all share.

An algorithm is a small object holding hyper-parameters and the model's pure functions; everything
that changes during training lives in a :class:`MetaState` that ``meta_step`` takes and returns, so a
meta-step is a function of (state, batch) and a checkpoint is just the state plus the hyper-parameters.

Shared here, so each algorithm's own file reads as the algorithm and nothing else:

- ``sgd_step``: one plain gradient step on a parameter dict (the inner-loop update);
- ``Algorithm.over_tasks``: run a per-task function over a meta-batch, looped or ``vmap``'d, and
  average its outputs (``task_batching``, see :data:`TASK_BATCHING`); ``Algorithm.meta_gradient``:
  the same for a per-task loss, differentiated with respect to the meta-parameters;
- ``Algorithm.outer_update``: one step of the outer optimiser, whose state travels in the MetaState;
- ``Algorithm.adapt`` / ``predict``: the test-time adaptation every algorithm is evaluated with.

Cost unit. Metrics report ``passes``: forward-backward passes over one image set of the whole
meta-batch (the T support sets, or the T query sets, batched or looped: one pass either way). This is
the unit ``B`` of the ``bench`` command: first-order MAML costs ``n + 1`` passes per meta-step.
``images`` counts the images those passes saw.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch_optimizer
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils import _pytree as pytree

from algorithms.losses import get_loss
from algorithms.models import Model
from tasks.batch import TaskBatch

Params = dict[str, Tensor]

TASK_BATCHING = ("loop", "vmap", "auto")
"""How a meta-batch's tasks are run. ``"loop"``: one task after another, each task's graph freed
before the next (memory of one task). ``"vmap"``: all tasks at once with ``torch.func.vmap`` (one
batched kernel per layer; memory of all T tasks at once, which for second-order MAML is very large:
~16x the loop's at n=10, T=7). ``"auto"``: ``"loop"`` for second-order algorithms, ``"vmap"`` for the
rest. Both paths compute the same gradients (tested)."""

_UNSUPPORTED_OPTIMIZERS = {
    "lbfgs": "it needs a loss closure",
    "sparseadam": "it needs sparse gradients",
    "muon": "it updates 2-D weights only",
    "lookahead": "it wraps another optimiser",
    "optimizer": "it is the abstract base class",
}


@dataclass
class MetaState:
    """Everything a meta-learner updates: what a checkpoint holds.

    ``params``: the model's weights (the initialisation that adaptation starts from).
    ``extra``: other meta-learned tensors (e.g. per-parameter step sizes); empty for the four here.
    ``optimizer``: the outer optimiser's ``state_dict`` ({} before the first step).
    ``step``: meta-steps taken.
    """

    params: Params
    extra: dict[str, Tensor]
    optimizer: dict
    step: int


def sgd_step(params: Params, grads: Params, rate: float | Tensor | Params) -> Params:
    """One plain gradient step ``p - rate * g``; ``rate`` is a number or one tensor per parameter."""
    if isinstance(rate, dict):
        return {name: p - rate[name] * grads[name] for name, p in params.items()}
    return {name: p - rate * grads[name] for name, p in params.items()}


def _optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    found = {}
    for module, names in ((torch.optim, dir(torch.optim)), (torch_optimizer, torch_optimizer.__all__)):
        for attr in names:
            cls = getattr(module, attr)
            if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
                found.setdefault(attr.lower(), cls)  # torch.optim wins over torch_optimizer on a clash
    return {name: cls for name, cls in found.items() if name not in _UNSUPPORTED_OPTIMIZERS}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """An outer optimiser by name, case-insensitive: any ``torch.optim`` or ``torch_optimizer`` class."""
    key = name.lower()
    if key in _UNSUPPORTED_OPTIMIZERS:
        raise ValueError(f"outer optimiser {name!r} is not supported: {_UNSUPPORTED_OPTIMIZERS[key]}")
    classes = _optimizer_classes()
    if key not in classes:
        raise ValueError(f"unknown outer optimiser {name!r}; valid (case-insensitive): {', '.join(sorted(classes))}")
    return classes[key]


class Algorithm(abc.ABC):
    """A gradient-based meta-learner. Subclasses set ``name`` (via ``@register``) and ``meta_step``.

    Hyper-parameters shared by all: ``loss`` (name in ``algorithms.losses``), ``inner_steps`` n and
    ``inner_lr`` alpha (the inner loop and the shared test-time adaptation), ``outer_optimizer`` and
    ``outer_lr`` (the meta-update), ``task_batching`` (see :data:`TASK_BATCHING`).
    """

    name: ClassVar[str]
    second_order: ClassVar[bool] = False  # "auto" task batching loops over tasks when True

    def __init__(
        self,
        model: Model,
        loss: str = "dice",
        inner_steps: int = 10,
        inner_lr: float = 0.4,
        outer_optimizer: str = "adam",
        outer_lr: float = 1e-3,
        task_batching: str = "auto",
    ):
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"{self.name}: inner_steps must be an integer >= 0, got {inner_steps!r}")
        for label, value in (("inner_lr", inner_lr), ("outer_lr", outer_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.name}: {label} must be a finite number >= 0, got {value!r}")
        if task_batching not in TASK_BATCHING:
            raise ValueError(f"{self.name}: task_batching must be one of {', '.join(TASK_BATCHING)}, got {task_batching!r}")
        self.model = model
        self.loss = loss
        self.loss_fn = get_loss(loss)
        self.inner_steps = inner_steps
        self.inner_lr = float(inner_lr)
        self.outer_optimizer = outer_optimizer
        self.optimizer_cls = optimizer_class(outer_optimizer)
        self.outer_lr = float(outer_lr)
        self.task_batching = task_batching

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

    def step_size(self, extra: dict[str, Tensor], step: int) -> float | Tensor | Params:
        """The inner rate at inner step ``step``: alpha unless an algorithm meta-learns its rates
        (it then overrides this to read them from ``extra``)."""
        return self.inner_lr

    def resolved_task_batching(self) -> str:
        if self.task_batching == "auto":
            return "loop" if self.second_order else "vmap"
        return self.task_batching

    def over_tasks(self, fn: Callable, shared: tuple, per_task: tuple[Tensor, ...]):
        """``mean over t of fn(*shared, *(x[t] for x in per_task))``, for any nest of tensors ``fn``
        returns (nothing differentiated); ``shared`` is the same for every task (e.g. the weights)."""
        tasks = per_task[0].shape[0]
        if self.resolved_task_batching() == "vmap":
            out = vmap(fn, in_dims=(None,) * len(shared) + (0,) * len(per_task))(*shared, *per_task)
            return pytree.tree_map(lambda t: t.mean(0), out)
        total = None
        for t in range(tasks):
            out = fn(*shared, *(x[t] for x in per_task))
            total = out if total is None else pytree.tree_map(torch.add, total, out)
        return pytree.tree_map(lambda t: t / tasks, total)

    def meta_gradient(self, task_loss: Callable, state: MetaState, per_task: tuple[Tensor, ...]):
        """The gradient of ``mean over t of task_loss(params, extra, *(x[t] for x in per_task))`` with
        respect to ``state.params`` and ``state.extra``; returns (grad_params, grad_extra, mean loss).

        Looped, the outer derivative is taken by ordinary autograd, task by task, each task's graph
        freed before the next (measured ~20% faster on CPU than nesting ``torch.func.grad`` around the
        inner ``torch.func.grad``; the same gradients up to rounding). Vmapped, by ``torch.func.grad``
        under ``vmap``, all T graphs alive at once (ordinary autograd around a ``vmap`` gives wrong
        second derivatives through batch-statistics BatchNorm in torch 2.14: caught by the tests)."""
        tasks = per_task[0].shape[0]
        if self.resolved_task_batching() == "vmap":
            per_task_gradient = grad_and_value(task_loss, argnums=(0, 1))
            in_dims = (None, None) + (0,) * len(per_task)
            (grad_params, grad_extra), losses = vmap(per_task_gradient, in_dims=in_dims)(state.params, state.extra, *per_task)
            mean = lambda tree: {k: v.mean(0) for k, v in tree.items()}  # noqa: E731
            return mean(grad_params), mean(grad_extra), losses.mean()
        with torch.enable_grad():
            params = {k: v.detach().requires_grad_(True) for k, v in state.params.items()}
            extra = {k: v.detach().requires_grad_(True) for k, v in state.extra.items()}
            leaves = [*params.values(), *extra.values()]
            loss, grads = 0.0, [torch.zeros_like(leaf) for leaf in leaves]
            for t in range(tasks):
                task_loss_t = task_loss(params, extra, *(x[t] for x in per_task)) / tasks
                task_grads = torch.autograd.grad(task_loss_t, leaves, materialize_grads=True)
                grads = [total + g for total, g in zip(grads, task_grads)]
                loss = loss + task_loss_t.detach()
        return dict(zip(params, grads[: len(params)])), dict(zip(extra, grads[len(params) :])), loss

    def open_optimizer(self, state: MetaState) -> tuple[torch.optim.Optimizer, Params, dict[str, Tensor]]:
        """Fresh leaf copies of ``state.params`` and ``state.extra`` and an outer optimiser over them,
        loaded with (a copy of) the state's optimiser state, so the old state is never mutated."""
        params = {k: v.detach().clone().requires_grad_(True) for k, v in state.params.items()}
        extra = {k: v.detach().clone().requires_grad_(True) for k, v in state.extra.items()}
        optimizer = self.optimizer_cls([*params.values(), *extra.values()], lr=self.outer_lr)
        if state.optimizer:
            optimizer.load_state_dict(copy.deepcopy(state.optimizer))
        return optimizer, params, extra

    def close_optimizer(self, state: MetaState, optimizer, params: Params, extra: dict[str, Tensor]) -> MetaState:
        return MetaState(
            params={k: v.detach() for k, v in params.items()},
            extra={k: v.detach() for k, v in extra.items()},
            optimizer=optimizer.state_dict(),
            step=state.step + 1,
        )

    def outer_update(self, state: MetaState, grad_params: Params, grad_extra: dict[str, Tensor] | None = None) -> MetaState:
        """One step of the outer optimiser along the meta-gradient; returns the next state."""
        optimizer, params, extra = self.open_optimizer(state)
        for leaves, grads in ((params, grad_params), (extra, grad_extra or {})):
            for name, leaf in leaves.items():
                leaf.grad = grads[name].detach() if name in grads else None  # None: the optimiser skips it
        optimizer.step()
        return self.close_optimizer(state, optimizer, params, extra)

    def check_finite(self, loss: Tensor, state: MetaState) -> float:
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.name}: loss is {value} at meta-step {state.step}; lower the learning rates?")
        return value

    # -- test-time adaptation (shared by all, so comparisons are fair) --------------------------

    def adapt(self, state: MetaState, support_x: Tensor, support_y: Tensor) -> Iterator[tuple[int, Params]]:
        """Adapt to E episodes at once: ``support_x``/``support_y`` [E, k, 1, H, W].

        Yields ``(i, params)`` for i = 0..n, where ``params`` (leading dim E) are the weights after i
        plain gradient steps on the support loss at rate ``step_size(extra, i)``. First-order, no
        graph kept: each step's gradient is computed and dropped.
        """
        episodes = support_x.shape[0]
        fast = {k: v.detach().expand(episodes, *v.shape) for k, v in state.params.items()}
        yield 0, fast

        def one_step(params, x, y, rate):
            grads, loss = grad_and_value(self.loss_on)(params, x, y)
            return sgd_step(params, grads, rate), loss

        for i in range(self.inner_steps):
            rate = self.step_size(state.extra, i)
            fast, losses = vmap(one_step, in_dims=(0, 0, 0, None))(fast, support_x, support_y, rate)
            if not bool(torch.isfinite(losses).all()):
                raise FloatingPointError(f"{self.name}: support loss is {losses.tolist()} at adaptation step {i + 1}")
            yield i + 1, fast

    def predict(self, params: Params, query_x: Tensor) -> Tensor:
        """Logits [E, q, 1, H, W] of each episode's adapted ``params`` (leading dim E) on its queries."""
        with torch.no_grad():
            return vmap(self.model.apply)(params, query_x)
