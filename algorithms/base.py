"""The interface every algorithm implements, and the few pieces they all share.

An algorithm is a small object holding hyper-parameters and the model's pure functions; everything
that changes during training lives in a :class:`MetaState` that ``meta_step`` takes and returns, so a
meta-step is a function of (state, batch) and a checkpoint is just the state plus the hyper-parameters.

Shared here, so each algorithm's own file reads as the algorithm and nothing else:

- ``sgd_step``: one plain gradient step on a parameter dict (the inner-loop update);
- ``grad_and_loss``: the gradient of a loss w.r.t. a parameter dict, by plain autograd where no
  ``torch.func`` transform is active (faster, and checkpointable), by ``torch.func`` under ``vmap``;
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
"""How a meta-batch's tasks are run: ``"loop"``, ``"vmap"``, ``"auto"``, or a chunk size c (an integer >= 1,
also as a string of digits, e.g. from the CLI).

- ``"loop"``: one task after another, by plain autograd, each task's graph freed before the next: the memory
  of one task, and the fused kernels of an ordinary backward pass (see ``grad_and_loss``).
- ``"vmap"``: all T tasks at once with ``torch.func.vmap`` (one batched kernel per layer). Memory of all T
  tasks at once; for second-order MAML ~2.3x the loop's memory *per task* (8.7 GB against 540 MB at n=10, T=7,
  the reference U-Net).
- c: chunked vmap, ``ceil(T / c)`` vmap calls of at most c tasks each (c >= T is ``"vmap"``).
- ``"auto"``, the rule. On CPU ``"loop"``: there vmap turns each task's weights into a group of a grouped
  convolution, which ran no faster than T ordinary ones (reference U-Net, n=10: first-order MAML 1.24 x (n+1)B
  vmapped against 1.15 looped, Reptile 1.17 against 1.00) and kept 8x the memory (472 MB against 57); for
  second-order MAML vmap saved ~10% of the time for ~16x the memory. On an accelerator, first-order algorithms
  keep no graph across inner steps, so all T tasks fit: ``"vmap"``. Second-order ones vmap over as many tasks
  as fit in :data:`TASK_MEMORY_BUDGET_MB`: chunks of c = floor(budget / per-task estimate), ``"loop"`` when
  c < 2, ``"vmap"`` when c >= T. The per-task estimate is
  :data:`SECOND_ORDER_VMAP_FACTOR` x n x the bytes one differentiable inner step keeps for the outer backward
  pass, counted once per input shape on one task with a saved-tensor hook. The budget is a constant, not
  the free memory, so one configuration batches (and rounds) the same way on every machine.

Every choice computes the same gradients up to float rounding (tested: loop == vmap == chunks)."""

TASK_MEMORY_BUDGET_MB = 4096
"""What ``task_batching="auto"`` lets one vmapped chunk of second-order tasks keep on an accelerator."""

SECOND_ORDER_VMAP_FACTOR = 2.3
"""Memory per task of a vmapped second-order meta-step over the looped one's (measured: 8.7 GB / 7 tasks
against 540 MB, reference U-Net, n=10)."""

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


def grad_and_loss(loss_fn: Callable, params: Params, *args, create_graph: bool = False) -> tuple[Params, Tensor]:
    """``(d loss_fn(params, *args) / d params, loss)``.

    Under a ``torch.func`` transform (tasks or episodes ``vmap``'d) by ``torch.func.grad_and_value``, which
    composes with the transforms around it. Otherwise by ``torch.autograd.grad``: the fused kernels of an
    ordinary backward pass (``torch.func.grad`` decomposes e.g. GroupNorm's backward into elementwise ops:
    measured ~20% slower on CPU), and it works inside ``torch.utils.checkpoint``, which ``torch.func`` does
    not. ``create_graph``: the gradient stays differentiable w.r.t. ``params`` (second order); otherwise it is
    a constant and the loss is detached.
    """
    if torch._C._functorch.peek_interpreter_stack() is not None:  # inside vmap / torch.func.grad
        return grad_and_value(loss_fn)(params, *args)
    with torch.enable_grad():
        if create_graph:
            leaves = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
        else:
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = loss_fn(leaves, *args)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph, materialize_grads=True)
    return dict(zip(leaves, grads)), (loss if create_graph else loss.detach())


def saved_megabytes(run: Callable[[], object]) -> float:
    """MB of the distinct storages autograd saves for a backward pass while ``run()`` executes, seen by a
    saved-tensor hook (``torch.utils.checkpoint``'s own hooks take over inside its regions, so what a
    checkpointed region recomputes is not counted)."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(storages.values()) / 2**20


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
    second_order: ClassVar[bool] = False  # "auto" task batching budgets vmap's memory on accelerators when True

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
        if isinstance(task_batching, str) and task_batching.isdigit():
            task_batching = int(task_batching)
        if not (task_batching in TASK_BATCHING or (type(task_batching) is int and task_batching >= 1)):
            raise ValueError(
                f"{self.name}: task_batching must be one of {', '.join(TASK_BATCHING)} or a chunk size "
                f"(tasks per vmap call, an integer >= 1), got {task_batching!r}"
            )
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

    def _auto_task_batching(self, per_task: tuple[Tensor, ...] | None) -> str | int:
        """``task_batching="auto"``: see :data:`TASK_BATCHING` for the rule."""
        if per_task is None or per_task[0].device.type == "cpu":
            return "loop"
        if not self.second_order:
            return "vmap"
        return self.chunk_that_fits(per_task, TASK_MEMORY_BUDGET_MB)

    def chunk_that_fits(self, per_task: tuple[Tensor, ...], budget_mb: float) -> str | int:
        """Second order: the most tasks per vmap call whose graphs fit in ``budget_mb`` (estimated as in
        :data:`TASK_BATCHING`), ``"loop"`` when fewer than 2 fit."""
        per_task_mb = SECOND_ORDER_VMAP_FACTOR * self.inner_steps * self._inner_step_graph_mb(per_task)
        chunk = int(budget_mb // max(per_task_mb, 1e-9))
        return "loop" if chunk < 2 else chunk

    def _inner_step_graph_mb(self, per_task: tuple[Tensor, ...]) -> float:
        """MB one differentiable inner step on one task's support set keeps for the outer backward pass,
        counted once per input shape with a saved-tensor hook."""
        support_x, support_y = per_task[0][0], per_task[1][0]
        key = (tuple(support_x.shape), support_x.dtype, str(support_x.device))
        cache = self.__dict__.setdefault("_graph_mb", {})
        if key not in cache:
            params = {k: v.to(support_x.device) for k, v in self.model.init(0).items()}
            cache[key] = saved_megabytes(lambda: grad_and_loss(self.loss_on, params, support_x, support_y, create_graph=True))
        return cache[key]

    def task_chunk(self, per_task: tuple[Tensor, ...]) -> int | None:
        """Tasks per ``vmap`` call for these tasks (``per_task``: tensors with the task axis first), or
        None to loop over them with plain autograd (see :data:`TASK_BATCHING`)."""
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

    def over_tasks(self, fn: Callable, shared: tuple, per_task: tuple[Tensor, ...]):
        """``mean over t of fn(*shared, *(x[t] for x in per_task))``, for any nest of tensors ``fn``
        returns (nothing differentiated); ``shared`` is the same for every task (e.g. the weights)."""
        tasks, chunk = per_task[0].shape[0], self.task_chunk(per_task)
        if chunk is None:
            outs = [fn(*shared, *(x[t] for x in per_task)) for t in range(tasks)]
        else:
            batched = vmap(fn, in_dims=(None,) * len(shared) + (0,) * len(per_task))
            outs = [batched(*shared, *(x[c : c + chunk] for x in per_task)) for c in range(0, tasks, chunk)]
            outs = [pytree.tree_map(lambda t: t.sum(0), out) for out in outs]
        return pytree.tree_map(lambda *parts: torch.stack(parts).sum(0) / tasks, *outs)

    def meta_gradient(self, task_loss: Callable, state: MetaState, per_task: tuple[Tensor, ...]):
        """The gradient of ``mean over t of task_loss(params, extra, *(x[t] for x in per_task))`` with
        respect to ``state.params`` and ``state.extra``; returns (grad_params, grad_extra, mean loss).

        Looped, the outer derivative is taken by ordinary autograd, task by task, each task's graph
        freed before the next (with ``grad_and_loss``'s plain autograd inside: the fused kernels, and
        checkpointable). Vmapped (in chunks of tasks), by ``torch.func.grad`` under ``vmap``, a chunk's
        graphs alive at once (ordinary autograd around a ``vmap`` gives wrong second derivatives through
        batch-statistics BatchNorm in torch 2.14: caught by the tests)."""
        if self.task_chunk(per_task) is not None:
            per_task_gradient = grad_and_value(task_loss, argnums=(0, 1))
            (grad_params, grad_extra), loss = self.over_tasks(per_task_gradient, (state.params, state.extra), per_task)
            return grad_params, grad_extra, loss
        tasks = per_task[0].shape[0]
        with torch.enable_grad():
            params = {k: v.detach().requires_grad_(True) for k, v in state.params.items()}
            extra = {k: v.detach().requires_grad_(True) for k, v in state.extra.items()}
            leaves = [*params.values(), *extra.values()]
            loss, grads = 0.0, None
            for t in range(tasks):
                task_loss_t = task_loss(params, extra, *(x[t] for x in per_task)) / tasks
                task_grads = torch.autograd.grad(task_loss_t, leaves, materialize_grads=True)
                grads = task_grads if grads is None else [total.add_(g) for total, g in zip(grads, task_grads)]
                loss = loss + task_loss_t.detach()
        return dict(zip(params, grads[: len(params)])), dict(zip(extra, grads[len(params) :])), loss

    def open_optimizer(self, state: MetaState) -> tuple[torch.optim.Optimizer, Params, dict[str, Tensor]]:
        """Fresh leaf copies of ``state.params`` and ``state.extra`` and an outer optimiser over them,
        loaded with (a copy of) the state's optimiser state, so the old state is never mutated."""
        params = {k: v.detach().clone().requires_grad_(True) for k, v in state.params.items()}
        extra = {k: v.detach().clone().requires_grad_(True) for k, v in state.extra.items()}
        optimizer = self.optimizer_cls([*params.values(), *extra.values()], lr=self.outer_lr)
        if state.optimizer:  # its tensors cloned: load_state_dict keeps them, and step() updates them in place
            optimizer.load_state_dict(pytree.tree_map_only(Tensor, torch.clone, state.optimizer))
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
        theta = {k: v.detach() for k, v in state.params.items()}
        yield 0, {k: v.expand(episodes, *v.shape) for k, v in theta.items()}

        def one_step(params, x, y, rate):
            grads, loss = grad_and_loss(self.loss_on, params, x, y)
            return sgd_step(params, grads, rate), loss

        # The first step starts every episode from the same theta: unbatched weights (in_dims None) give
        # plain kernels over all E x k images instead of E-group convolutions.
        fast, params_dim = theta, None
        for i in range(self.inner_steps):
            rate = self.step_size(state.extra, i)
            fast, losses = vmap(one_step, in_dims=(params_dim, 0, 0, None))(fast, support_x, support_y, rate)
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
