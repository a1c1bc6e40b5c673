"""The tensor form of a meta-batch, the one thing the data layer hands to algorithms."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TaskBatch(NamedTuple):
    """T tasks stacked for ``vmap``: images float32 in [0, 1], masks float32 in {0, 1}.

    support_x, support_y: [T, k, 1, H, W];  query_x, query_y: [T, q, 1, H, W].
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(*(t.to(device) for t in self))
