"""The gradient of a loss with respect to a parameter dict, taken the fastest way the context allows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad_and_value

from algorithms.state import Params


def grad_and_loss(loss_fn: Callable, params: Params, *args, create_graph: bool = False) -> tuple[Params, Tensor]:
    """``(d loss_fn(params, *args) / d params, loss)``.

    Under a ``torch.func`` transform (tasks or episodes ``vmap``'d) by ``torch.func.grad_and_value``, which
    composes with the transforms around it. Otherwise by ``torch.autograd.grad``: the fused kernels of an
    ordinary backward pass (``torch.func.grad`` decomposes e.g. GroupNorm's backward into elementwise ops,
    which ran slower on CPU), and it works inside ``torch.utils.checkpoint``, which ``torch.func`` does
    not. ``create_graph``: the gradient stays differentiable w.r.t. ``params`` (second order); otherwise it is
    a constant and the loss is detached.
    """
    if torch._C._functorch.peek_interpreter_stack() is not None:  # inside vmap / torch.func.grad
        grads, loss = grad_and_value(loss_fn)(params, *args)
        if create_graph:
            return grads, loss
        return {k: g.detach() for k, g in grads.items()}, loss.detach()  # constants to an outer torch.func.grad too
    with torch.enable_grad():
        if create_graph:
            leaves = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
        else:
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = loss_fn(leaves, *args)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph, materialize_grads=True)
    return dict(zip(leaves, grads)), (loss if create_graph else loss.detach())
