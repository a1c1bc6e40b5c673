"""One run of the benchmark: meta-train on seven lines, evaluate on all eight.

``run(config) -> RunResult`` is a pure function of the configuration (plus an optional meta-state to resume
from): it reads data, computes, and returns records. It writes no files; the store does, through the
``on_checkpoint`` callback and after the run. Any executor (in-process, process pool, a cluster) calls this.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

import algorithms
from algorithms import Algorithm, MetaState, ModelConfig
from algorithms.state import move_state
from benchmark.config import RunConfig
from benchmark.errors import RunFailed
from benchmark.evaluation import EVAL_SPLIT, evaluate_protocols
from benchmark.observations import per_episode
from benchmark.validation import RateSelection, adapted_iou, select_rate, validation_batch
from tasks.batch import TaskBatch
from tasks.catalogue import cell_line
from tasks.episodes import sample_episode, stack_episodes
from tasks.livecell import LiveCell, open_livecell

TRAIN_SPLIT = "train"


@dataclass
class RunResult:
    config: RunConfig
    observations: pd.DataFrame  # one row per line x episode x query image x adaptation step x method
    manifests: list[dict]
    examples: dict[str, np.ndarray]
    algorithm: Algorithm
    state: MetaState
    train_log: list[dict] = field(default_factory=list)  # one {step, loss, passes, wall_s, ...} per meta-step
    rate_selection: RateSelection | None = None
    wall_s: float = 0.0
    peak_mem_mb: float = 0.0
    flops: tuple[tuple[int, int, int], ...] = ()  # (first, end, FLOPs each) of the meta-steps: bench.flops.flop_schedule

    @property
    def passes(self) -> int:
        """Forward-backward passes spent in meta-training (the budget the baselines are matched on)."""
        return sum(entry["passes"] for entry in self.train_log)

    @property
    def train_flops(self) -> int:
        """FLOPs of meta-training (convolutions and matrix products): a budget that, unlike ``passes``, counts the
        second derivatives of second-order meta-gradients."""
        return sum((end - first) * flops for first, end, flops in self.flops)

    @property
    def episodes(self) -> pd.DataFrame:
        """The compact table: values averaged over each episode's query images."""
        return per_episode(self.observations)


def device_of(config: RunConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise RunFailed(f"device {config.device!r} asked for, but no CUDA GPU is available here")
    return torch.device(config.device)


def build(config: RunConfig) -> Algorithm:
    """The algorithm and model a configuration names: its ``model`` settings build the model, its
    ``algorithm`` settings and own options the algorithm (:func:`benchmark.config.setting`)."""
    model_settings = config.part("model")
    model = algorithms.build_model(ModelConfig(name=model_settings.pop("model"), **model_settings))
    options = dict(config.options)
    if "seed" in algorithms.registry.hyperparameters(config.algo):
        options.setdefault("seed", config.seed)  # an algorithm's own randomness follows the run's seed
    if "meta_steps" in algorithms.registry.hyperparameters(config.algo):
        options.setdefault("meta_steps", config.meta_steps)  # an algorithm's schedules span the run's length
    return algorithms.create(config.algo, model, **config.part("algorithm"), **options)


def check_feasible(config: RunConfig, data: LiveCell) -> None:
    """Fail before any compute if the data cannot serve the episodes the configuration asks for."""
    needs = [(config.holdout, EVAL_SPLIT, config.k + config.eval_queries)]
    needs += [(line, TRAIN_SPLIT, config.k + config.query_size) for line in config.training_lines]
    if config.seen_episodes:
        needs += [(line, EVAL_SPLIT, config.k + config.eval_queries) for line in config.training_lines]
    for line, split, wanted in needs:
        have = len(data.images(cell_line(line), split))
        if have < wanted:
            raise RunFailed(
                f"{line} has {have} {split} images in {data.root}, but k={config.k} support plus "
                f"{wanted - config.k} query images need {wanted}"
            )


def meta_batch(config: RunConfig, data: LiveCell, step: int) -> TaskBatch:
    """The tasks of meta-step ``step``: a function of (seed, step) alone, so a resumed run sees the same data."""
    lines = config.training_lines
    episodes = []
    for t in range(config.meta_batch):
        index = step * config.meta_batch + t
        line = lines[index % len(lines)]
        episodes.append(
            sample_episode(data, line, TRAIN_SPLIT, config.k, config.query_size, config.crop, config.seed, index)
        )
    return stack_episodes(episodes)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def meta_train(config, data, algo, state, log, device, on_checkpoint, progress, validation=None) -> MetaState:
    """Meta-steps from ``state.step`` to ``config.meta_steps``, appending (step, loss, passes, wall_s) to ``log``.

    ``wall_s`` is the meta-training time up to that step over every attempt (a resumed run continues the clock
    of its checkpoint), so a run's cost does not depend on how often it was interrupted. Every ``budget_every``
    meta-steps (and at step 0 and the last) the entry also holds the budget curve's point: IoU on the
    ``validation`` episodes before and after the algorithm's adaptation (``val_iou_0``, ``val_iou_n``), timed
    apart from training. Stops with :class:`RunFailed` on a non-finite loss.
    """
    task = progress.add_task("meta-train", total=config.meta_steps, completed=state.step) if progress else None
    clock = time.perf_counter() - trained_seconds(log)

    def budget_point(step: int) -> dict:
        nonlocal clock
        if validation is None or not config.budget_every:
            return {}
        if step % config.budget_every and step != config.meta_steps:
            return {}
        started = time.perf_counter()
        try:
            before, after = adapted_iou(algo, state, validation)
        except FloatingPointError as err:
            raise RunFailed(f"adaptation diverged on the validation episodes at meta-step {step}: {err}") from None
        clock += time.perf_counter() - started  # not meta-training time
        return {"val_iou_0": round(before, 6), "val_iou_n": round(after, 6)}

    if state.step == 0 and not log and validation is not None and config.budget_every:
        log.append({"step": 0, "loss": float("nan"), "passes": 0, "wall_s": 0.0, **budget_point(0)})
    while state.step < config.meta_steps:
        batch = meta_batch(config, data, state.step).to(device)
        try:
            state, metrics = algo.meta_step(state, batch)
        except FloatingPointError as err:
            raise RunFailed(f"meta-training diverged: {err}") from None
        if not math.isfinite(metrics["loss"]):
            raise RunFailed(f"meta-training diverged: query loss {metrics['loss']} at meta-step {state.step}")
        log.append(
            {
                "step": state.step,
                "loss": float(metrics["loss"]),
                "passes": int(metrics["passes"]),
                "wall_s": round(time.perf_counter() - clock, 3),
            }
        )
        log[-1].update(budget_point(state.step))
        if on_checkpoint and (state.step % config.checkpoint_every == 0 or state.step == config.meta_steps):
            on_checkpoint(algo, state, log)
        if progress:
            progress.update(task, advance=1, description=f"meta-train  loss {metrics['loss']:.3f}")
    return state


def validation_set(config: RunConfig, data: LiveCell, device: torch.device) -> TaskBatch | None:
    """The run's validation episodes (meta-training lines' val split), if rate selection or budget points need them."""
    if not (config.adapt_rates or config.budget_every):
        return None
    batch = validation_batch(
        data, config.training_lines, config.k, config.eval_queries, config.crop, config.seed, config.validation_episodes
    )
    return batch.to(device)


def trained_seconds(log: list[dict]) -> float:
    """Meta-training seconds recorded up to the last logged step (0 for logs written before wall_s was)."""
    wall = log[-1].get("wall_s") if log else None
    return float(wall) if wall is not None and math.isfinite(wall) else 0.0


def prepare(config: RunConfig) -> tuple[torch.device, LiveCell, Algorithm]:
    """Everything a run needs before any compute, each failure a one-line error: the device, the data (able to
    serve the configuration's episodes) and the algorithm. ``execute`` calls it before it records anything, so an
    input error leaves no run behind."""
    device = device_of(config)
    data = open_livecell(config.data_root)
    check_feasible(config, data)
    return device, data, build(config)


def run(
    config: RunConfig,
    *,
    resume: tuple[MetaState, list[dict]] | None = None,
    on_checkpoint: Callable[[Algorithm, MetaState, list[dict]], None] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Meta-train (from a checkpointed state and its training log, if given), then evaluate on all eight lines.

    Runs on ``config.threads`` torch threads (the process's setting is restored afterwards). ``wall_s`` of the
    result counts the checkpointed meta-training of earlier attempts too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, resume, on_checkpoint, progress)
    finally:
        torch.set_num_threads(threads)


def _run(config, resume, on_checkpoint, progress) -> RunResult:
    torch.manual_seed(config.seed)
    device, data, algo = prepare(config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state, log = resume if resume is not None else (algo.init_state(algo.model.init(config.seed)), [])
    log = list(log)
    started = time.perf_counter() - trained_seconds(log)
    validation = validation_set(config, data, device)
    state = meta_train(config, data, algo, move_state(state, device), log, device, on_checkpoint, progress, validation)
    try:
        selection = select_rate(algo, state, validation, config.adapt_rates) if config.adapt_rates else None
        observations, manifests, examples = evaluate_protocols(config, data, algo, state, device, progress, selection)
    except FloatingPointError as err:
        raise RunFailed(f"test-time adaptation diverged: {err}") from None
    from benchmark.bench.flops import flop_schedule  # counted last: it draws no number the run depends on

    try:
        flops = flop_schedule(config, device)
    except (RuntimeError, OSError, MemoryError, ValueError, TypeError):
        flops = ()  # a finished run is not lost to its FLOP count; the report counts it from the configuration

    return RunResult(
        config=config,
        observations=observations,
        manifests=manifests,
        examples=examples,
        algorithm=algo,
        state=state,
        train_log=log,
        rate_selection=selection,
        wall_s=time.perf_counter() - started,
        peak_mem_mb=peak_memory_mb(device),
        flops=flops,
    )
