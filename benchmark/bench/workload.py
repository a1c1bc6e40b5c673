"""What is timed: variants of one configuration, B (the reference pass), and evaluation as ``run`` does it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from algorithms import Algorithm, MetaState
from algorithms.state import Params
from benchmark.config import FIELDS, RunConfig
from benchmark.evaluation import evaluation_episodes, scored_steps
from tasks.batch import TaskBatch
from tasks.episodes import stack_episodes
from tasks.livecell import LiveCell

VARIANT_FIELDS = tuple(name for name in RunConfig().part("algorithm") if name != "loss")
"""RunConfig fields a bench variant may change: the algorithm settings, which change the meta-step, but not the
loss, which changes B too (as would the data or the model)."""


def apply_variant(config: RunConfig, algo: str, overrides: dict[str, Any]) -> RunConfig:
    """``config`` for algorithm ``algo`` with a variant's settings: RunConfig fields among
    :data:`VARIANT_FIELDS`, anything else an algorithm-specific option. Settings that would change the data or
    the model (and so B) are refused: they belong on the command line, for every variant at once."""
    fields, options = {}, dict(config.options)
    for key, value in overrides.items():
        if key in VARIANT_FIELDS:
            fields[key] = value
        elif key in FIELDS:
            raise ValueError(
                f"variant {algo}: {key!r} changes the data or model that B is measured on; "
                f"set it for all variants with --{key.replace('_', '-')}"
            )
        else:
            options[key] = value
    return dataclasses.replace(config, algo=algo, algo_options=tuple(sorted(options.items())), **fields)


def baseline_pass(algo: Algorithm, params: Params, batch: TaskBatch, task_by_task: bool = False) -> Callable[[], None]:
    """B: one ordinary forward-backward pass over the support images of ``batch`` (T x k images as one batch).

    ``task_by_task``: the same images as T passes of k images, one per task: the least a meta-step that runs
    each task on its own weights pays per pass (the floor of a looped first-order meta-step over (n+1)B)."""
    leaves = [p.detach().requires_grad_(True) for p in params.values()]
    named = dict(zip(params, leaves))
    sets = list(zip(batch.support_x, batch.support_y)) if task_by_task else [(batch.support_x.flatten(0, 1), batch.support_y.flatten(0, 1))]

    def run() -> None:
        for images, masks in sets:
            torch.autograd.grad(algo.loss_on(named, images, masks), leaves)

    return run


def evaluation_batch(config: RunConfig, data: LiveCell, count: int) -> TaskBatch:
    """The first ``count`` evaluation episodes of the held-out line, as ``run`` samples them."""
    return stack_episodes(evaluation_episodes(config, data, config.holdout, range(count)))


def adapt_and_score(algo: Algorithm, state: MetaState, batch: TaskBatch) -> Tensor:
    """What evaluation computes for a batch of E episodes (``evaluation.scored_steps``): IoU [n + 1, E, q]."""
    return torch.stack([scores for _, _, scores in scored_steps(algo, state, batch)])


def one_by_one(batch: TaskBatch) -> list[TaskBatch]:
    """Each task of ``batch`` as a batch of one."""
    return [TaskBatch(*(t[e : e + 1] for t in batch)) for e in range(batch.tasks)]
