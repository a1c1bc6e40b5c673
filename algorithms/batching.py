"""Running a meta-batch's tasks: looped or ``vmap``'d (whole or in chunks), and differentiated either way.

The policy (which choice for which algorithm and device) is ``Algorithm.task_chunk``; the mechanics are here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils import _pytree as pytree

from algorithms.state import Params

TASK_BATCHING = ("loop", "vmap", "auto")
"""How a meta-batch's tasks are run: ``"loop"``, ``"vmap"``, ``"auto"``, or a chunk size c (an integer >= 1,
also as a string of digits, e.g. from the CLI).

- ``"loop"``: one task after another, by plain autograd, each task's graph freed before the next: the memory
  of one task, and the fused kernels of an ordinary backward pass (see ``grad_and_loss``).
- ``"vmap"``: all T tasks at once with ``torch.func.vmap`` (one batched kernel per layer). Memory of all T
  tasks at once; for second-order MAML about :data:`SECOND_ORDER_VMAP_FACTOR` times the loop's memory *per task*.
- c: chunked vmap, ``ceil(T / c)`` vmap calls of at most c tasks each (c >= T is ``"vmap"``).
- ``"auto"``, the rule. On CPU ``"loop"``: there vmap turns each task's weights into a group of a grouped
  convolution, which ran no faster than T ordinary ones and kept several times the memory (``python -m
  benchmark bench --algos fomaml,fomaml:task_batching=vmap`` shows both). On an accelerator, first-order
  algorithms keep no graph across inner steps, so all T tasks fit: ``"vmap"``. Second-order ones vmap over as
  many tasks as fit in :data:`TASK_MEMORY_BUDGET_MB`: chunks of c = floor(budget / per-task estimate),
  ``"loop"`` when c < 2, ``"vmap"`` when c >= T. The per-task estimate is :data:`SECOND_ORDER_VMAP_FACTOR` x n x
  the bytes one differentiable inner step keeps for the outer backward pass, counted once per input shape on
  one task with a saved-tensor hook. The budget is a constant, not the free memory, so one configuration
  batches (and rounds) the same way on every machine.

Every choice computes the same gradients up to float rounding (tested: loop == vmap == chunks)."""

TASK_MEMORY_BUDGET_MB = 4096
"""What ``task_batching="auto"`` lets one vmapped chunk of second-order tasks keep on an accelerator."""

SECOND_ORDER_VMAP_FACTOR = 2.3
"""Memory per task of a vmapped second-order meta-step over the looped one's, measured with ``bench``'s memory
probe (``--algos maml:task_batching=loop,maml:task_batching=vmap``) on the default preset's U-Net."""


def parse_task_batching(value: str | int, who: str) -> str | int:
    """``value`` as a :data:`TASK_BATCHING` choice (a string of digits becomes a chunk size); ValueError naming
    ``who`` otherwise."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not (value in TASK_BATCHING or (type(value) is int and value >= 1)):
        raise ValueError(
            f"{who}: task_batching must be one of {', '.join(TASK_BATCHING)} or a chunk size "
            f"(tasks per vmap call, an integer >= 1), got {value!r}"
        )
    return value


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


def over_tasks(fn: Callable, shared: tuple, per_task: tuple[Tensor, ...], chunk: int | None):
    """``mean over t of fn(*shared, *(x[t] for x in per_task))``, for any nest of tensors ``fn`` returns
    (nothing differentiated); ``shared`` is the same for every task (e.g. the weights). ``chunk``: tasks
    per ``vmap`` call, or None to loop."""
    tasks = per_task[0].shape[0]
    if chunk is None:
        outs = [fn(*shared, *(x[t] for x in per_task)) for t in range(tasks)]
    else:
        batched = vmap(fn, in_dims=(None,) * len(shared) + (0,) * len(per_task))
        outs = [batched(*shared, *(x[c : c + chunk] for x in per_task)) for c in range(0, tasks, chunk)]
        outs = [pytree.tree_map(lambda t: t.sum(0), out) for out in outs]
    return pytree.tree_map(lambda *parts: torch.stack(parts).sum(0) / tasks, *outs)


def meta_gradient(task_loss: Callable, params: Params, extra: dict[str, Tensor], per_task: tuple[Tensor, ...],
                  chunk: int | None) -> tuple[Params, dict[str, Tensor], Tensor]:
    """The gradient of ``mean over t of task_loss(params, extra, *(x[t] for x in per_task))`` with respect to
    ``params`` and ``extra``; returns (grad_params, grad_extra, mean loss).

    Looped (``chunk`` None), the outer derivative is taken by ordinary autograd, task by task, each task's graph
    freed before the next (with ``grad_and_loss``'s plain autograd inside: the fused kernels, and
    checkpointable). Vmapped (in chunks of tasks), by ``torch.func.grad`` under ``vmap``, a chunk's graphs alive
    at once (ordinary autograd around a ``vmap`` gives wrong second derivatives through batch-statistics
    BatchNorm in torch 2.14: caught by the tests)."""
    if chunk is not None:
        per_task_gradient = grad_and_value(task_loss, argnums=(0, 1))
        (grad_params, grad_extra), loss = over_tasks(per_task_gradient, (params, extra), per_task, chunk)
        return grad_params, grad_extra, loss
    tasks = per_task[0].shape[0]
    with torch.enable_grad():
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        extra = {k: v.detach().requires_grad_(True) for k, v in extra.items()}
        leaves = [*params.values(), *extra.values()]
        loss, grads = 0.0, None
        for t in range(tasks):
            task_loss_t = task_loss(params, extra, *(x[t] for x in per_task)) / tasks
            task_grads = torch.autograd.grad(task_loss_t, leaves, materialize_grads=True)
            grads = task_grads if grads is None else [total.add_(g) for total, g in zip(grads, task_grads)]
            loss = loss + task_loss_t.detach()
    return dict(zip(params, grads[: len(params)])), dict(zip(extra, grads[len(params) :])), loss
