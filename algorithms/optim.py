"""The outer optimiser: any ``torch.optim`` or ``torch_optimizer`` class by name, stepped as a pure function
of a :class:`MetaState` (its state travels in the MetaState, so a meta-step never mutates its input)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_optimizer
from torch import Tensor
from torch.utils import _pytree as pytree

from algorithms.state import MetaState, Params

_UNSUPPORTED_OPTIMIZERS = {
    "lbfgs": "it needs a loss closure",
    "sparseadam": "it needs sparse gradients",
    "muon": "it updates 2-D weights only",
    "lookahead": "it wraps another optimiser",
    "optimizer": "it is the abstract base class",
}


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


@dataclass(frozen=True)
class OuterOptimizer:
    """Optimiser class ``cls`` at learning rate ``lr`` over a MetaState's ``params`` and ``extra``; ``options``:
    further keyword arguments of ``cls`` as (name, value) pairs (e.g. ``(("betas", (0.9, 0.95)),)``)."""

    cls: type[torch.optim.Optimizer]
    lr: float
    options: tuple[tuple[str, object], ...] = ()

    def open(self, state: MetaState) -> tuple[torch.optim.Optimizer, Params, dict[str, Tensor]]:
        """Fresh leaf copies of ``state.params`` and ``state.extra`` and an optimiser over them, loaded with
        (a copy of) the state's optimiser state, so the old state is never mutated."""
        params = {k: v.detach().clone().requires_grad_(True) for k, v in state.params.items()}
        extra = {k: v.detach().clone().requires_grad_(True) for k, v in state.extra.items()}
        optimizer = self.cls([*params.values(), *extra.values()], lr=self.lr, **dict(self.options))
        if state.optimizer:  # its tensors cloned: load_state_dict keeps them, and step() updates them in place
            optimizer.load_state_dict(pytree.tree_map_only(Tensor, torch.clone, state.optimizer))
            for group in optimizer.param_groups:  # this rate, not the saved one: a schedule sets it per step
                group["lr"] = self.lr
        return optimizer, params, extra

    @staticmethod
    def close(state: MetaState, optimizer: torch.optim.Optimizer, params: Params, extra: dict[str, Tensor]) -> MetaState:
        """The next MetaState, after the optimiser from :meth:`open` has stepped ``params`` and ``extra``."""
        return MetaState(
            params={k: v.detach() for k, v in params.items()},
            extra={k: v.detach() for k, v in extra.items()},
            optimizer=optimizer.state_dict(),
            step=state.step + 1,
        )

    def update(self, state: MetaState, grad_params: Params, grad_extra: dict[str, Tensor] | None = None) -> MetaState:
        """One step along the meta-gradient; returns the next state."""
        optimizer, params, extra = self.open(state)
        for leaves, grads in ((params, grad_params), (extra, grad_extra or {})):
            for name, leaf in leaves.items():
                leaf.grad = grads[name].detach() if name in grads else None  # None: the optimiser skips it
        optimizer.step()
        return self.close(state, optimizer, params, extra)
