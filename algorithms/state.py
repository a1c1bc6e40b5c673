"""What a meta-learner updates, as plain data: the :class:`MetaState` a meta-step takes and returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]
"""A model's weights (or a gradient of them), by parameter name."""


@dataclass
class MetaState:
    """Everything a meta-learner updates: what a checkpoint holds.

    ``params``: the model's weights (the initialisation that adaptation starts from).
    ``extra``: other meta-learned tensors (e.g. per-parameter inner rates); empty for the four here.
    ``optimizer``: the outer optimiser's ``state_dict`` ({} before the first step).
    ``step``: meta-steps taken.
    """

    params: Params
    extra: dict[str, Tensor]
    optimizer: dict
    step: int


def move_state(state: MetaState, device: torch.device) -> MetaState:
    """The meta-state on ``device`` (optimiser state included), e.g. a CPU checkpoint resumed on a GPU."""
    def move(obj):
        if isinstance(obj, torch.Tensor):
            return obj.to(device)
        if isinstance(obj, dict):
            return {k: move(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [move(v) for v in obj]
        return obj

    return MetaState(move(state.params), move(state.extra), move(state.optimizer), state.step)
