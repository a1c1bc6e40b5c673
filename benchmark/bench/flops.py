"""FLOP counting: a meta-step's convolution and matrix-product FLOPs over (n + 1) times B's are the ratio it
would reach if every kernel ran as fast per FLOP as B's do, so a time ratio far above it is overhead, and one
near it is the arithmetic itself. :func:`flop_schedule` counts a run's meta-training this way: the budget that
``passes`` understates for second-order algorithms, whose inner steps are differentiated twice."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.ops import aten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from algorithms.state import move_state
from benchmark.config import FIELDS, RunConfig
from tasks.batch import TaskBatch


def convolution_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                               _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward pass: the input gradient and the weight gradient each cost what the forward
    convolution does. (torch 2.14's formula ignores ``groups``: it counts the backward pass of a convolution of g
    groups as if each group saw all channels, and vmap over tasks turns per-task weights into such groups.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (bool(output_mask[0]) + bool(output_mask[1]))


def counting_flops(run: Callable[[], Any]) -> tuple[Any, int]:
    """``(run(), FLOPs it performed)``: convolutions and matrix products as ``torch.utils.flop_counter`` counts
    them (elementwise work, normalisation and pooling are not counted), grouped convolutions counted right."""
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: convolution_backward_flops}) as counter:
        result = run()
    return result, counter.get_total_flops()


# -- the FLOPs of a run's meta-training -----------------------------------------------------------------------

Piece = tuple[int, int, int]
"""``(first, end, flops)``: meta-steps ``first`` .. ``end - 1`` (by the meta-state's step before each) cost
``flops`` each."""

_SCHEDULES: dict[RunConfig, tuple[Piece, ...]] = {}


def flop_schedule(config: RunConfig, device: torch.device | str = "cpu") -> tuple[Piece, ...]:
    """The FLOPs of each of ``config``'s meta-steps, as pieces of equal cost covering ``0 .. meta_steps - 1``.

    A meta-step's arithmetic depends on the configuration and, through an algorithm's schedules, on the meta-step
    alone (maml++ turns second order on, a multi-step loss drops its earlier query passes), never on the pixels,
    the held-out line or the seed; and its tasks cost the same each. So one task's meta-step is counted, on random
    images of the configuration's shapes, and multiplied by the tasks of a meta-batch; once per configuration in
    this process. Schedules switch a term on or off for good, so the cost is constant between a few switch points:
    where two probed meta-steps cost the same, everything between them is taken to as well, and the switches are
    found by bisection (a handful of counted meta-steps, on ``device``)."""
    key = dataclasses.replace(config, holdout=RunConfig.holdout, seed=RunConfig.seed, device="cpu", threads=1)
    if key not in _SCHEDULES:
        _SCHEDULES[key] = _cached_on_disk(key, lambda: _count_schedule(config, torch.device(device)))
    return _SCHEDULES[key]


def _cached_on_disk(key: RunConfig, count: Callable[[], list[Piece]]) -> tuple[Piece, ...]:
    """Counting takes seconds to a minute (maml++: 14 meta-steps), and every run of a sweep in its own process
    would count again: the schedule is kept in the cache folder, under a hash of the configuration and the code
    (:func:`benchmark.numerics.current_fingerprint`), this module's source and torch's version, whose change is what
    could change it."""
    from benchmark.numerics import current_fingerprint
    from tasks.cache import atomic_write, cache_root

    counter = Path(__file__).read_bytes()  # the counting code itself, which the fingerprint does not cover
    name = hashlib.sha256(repr((current_fingerprint(), torch.__version__, counter, key.to_dict())).encode()).hexdigest()[:32]
    path = cache_root() / "flops" / f"{name}.json"
    try:
        return tuple((int(first), int(end), int(flops)) for first, end, flops in json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # absent or unreadable: counted again
        pieces = tuple(tuple(piece) for piece in count())
        atomic_write(path, lambda f: f.write(json.dumps(pieces).encode()))
        return pieces


def stored_schedule(settings: dict[str, Any]) -> tuple[Piece, ...]:
    """:func:`flop_schedule` of a configuration as a run's summary stores it (for runs recorded before their
    FLOPs were)."""
    values = {name: value for name, value in settings.items() if name in FIELDS}
    return flop_schedule(RunConfig(**values | {"algo_options": tuple(sorted(settings.get("algo_options", {}).items()))}))


def one_task(config: RunConfig) -> TaskBatch:
    """A meta-batch of one task in ``config``'s shapes, random pixels and masks; whole images (crop none) take the
    data's first task, whose sizes only the data set knows."""
    if config.crop is None:
        from benchmark.runner import meta_batch
        from tasks.livecell import open_livecell

        return TaskBatch(*(t[:1] for t in meta_batch(config, open_livecell(config.data_root), 0)))
    generator = torch.Generator().manual_seed(0)

    def images(count: int) -> torch.Tensor:
        return torch.rand(1, count, 1, config.crop, config.crop, generator=generator)

    return TaskBatch(images(config.k), images(config.k).round(), images(config.query_size), images(config.query_size).round())


def _count_schedule(config: RunConfig, device: torch.device) -> list[Piece]:
    from benchmark.runner import build

    if config.meta_steps == 0:
        return []
    algo = build(config)
    start = move_state(algo.init_state(algo.model.init(config.seed)), device)
    batch = one_task(config).to(device)

    @functools.cache
    def cost(step: int) -> int:
        return config.meta_batch * counting_flops(lambda: algo.meta_step(dataclasses.replace(start, step=step), batch))[1]

    def pieces(first: int, last: int) -> list[Piece]:
        if cost(first) == cost(last):
            return [(first, last + 1, cost(first))]
        if last == first + 1:
            return [(first, last, cost(first)), (last, last + 1, cost(last))]
        middle = (first + last) // 2
        left, right = pieces(first, middle), pieces(middle, last)
        return left[:-1] + [(left[-1][0], right[0][1], cost(middle))] + right[1:]  # both hold the middle

    return pieces(0, config.meta_steps - 1)
