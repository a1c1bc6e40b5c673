"""``measure``: one bench, composed of the timing rounds, FLOP counts, memory probes and the ``higher`` comparison;
``costs``: what its timings say a training step and an evaluation episode cost."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from algorithms import Algorithm, MetaState
from algorithms.state import Params
from benchmark.bench.against_higher import gradient_agreement, higher_meta_gradient, higher_meta_step, meta_gradient
from benchmark.bench.flops import counting_flops
from benchmark.bench.memory import MEMORY_METHODS, meta_step_memory
from benchmark.bench.timing import interleave, medians, round_ratios
from benchmark.bench.workload import adapt_and_score, baseline_pass, evaluation_batch, one_by_one
from benchmark.config import RunConfig
from benchmark.evaluation import evaluate
from benchmark.observations import HELD_OUT, collapse, per_episode
from benchmark.runner import build, device_of, meta_batch
from tasks.batch import TaskBatch
from tasks.livecell import LiveCell, open_livecell

SAMPLER_WARMUP_STEPS = 25  # meta-batches sampled before sampling is timed

HIGHER = "maml (higher)"

ROW_FIELDS = ("variant", "algo", "inner_steps", "task_batching", "passes", "seconds", "ratio_to_n1B", "ratio_min",
              "ratio_max", "flops_to_n1B", "peak_mem_mb", "error")
"""The columns of a :func:`measure` result's ``meta_steps`` rows."""


@dataclass
class Workload:
    """What one :func:`measure` times: every variant's algorithm and state on one meta-batch (the first
    variant's data, initial weights and batch), and the evaluation episodes."""

    variants: dict[str, RunConfig]
    device: torch.device
    data: LiveCell
    algos: dict[str, Algorithm]
    states: dict[str, MetaState]
    params: Params
    batch: TaskBatch

    @classmethod
    def of(cls, variants: dict[str, RunConfig]) -> Workload:
        first = next(iter(variants.values()))
        device = device_of(first)
        data = open_livecell(first.data_root)
        algos = {label: build(config) for label, config in variants.items()}
        params = {k: v.to(device) for k, v in next(iter(algos.values())).model.init(first.seed).items()}
        batch = meta_batch(first, data, 0).to(device)
        states = {label: algo.init_state(params) for label, algo in algos.items()}
        return cls(variants, device, data, algos, states, params, batch)

    @property
    def first(self) -> str:
        return next(iter(self.variants))

    def meta_step(self, label: str) -> Callable[[], Any]:
        return lambda: self.algos[label].meta_step(self.states[label], self.batch)


def measure(
    variants: dict[str, RunConfig],
    repeats: int = 5,
    warmup: int = 1,
    compare_higher: bool = False,
    memory: bool = True,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Time B, each variant's meta-step, evaluation (batched and one by one) and data sampling, interleaved.

    ``variants``: label -> configuration; they must share everything B depends on (data and model settings;
    see :func:`~benchmark.bench.workload.apply_variant`). The first variant's configuration sets the data, batch
    and evaluation episodes. With ``compare_higher``, second-order MAML through ``higher`` runs in the same
    rounds (label ``maml (higher)``) and its meta-gradient is checked against the first ``maml`` variant's.

    Returns plain data (JSON-ready): ``settings``, ``collapse`` (per variant, the collapse detector on the
    evaluation episodes), ``baseline`` (B), ``meta_steps`` (one row per variant), ``evaluation``, ``data``,
    ``higher`` (or None), ``times`` (every timed call, one row each).
    """
    if not variants:
        raise ValueError("no variants to measure")
    maml = next((label for label, config in variants.items() if config.algo == "maml"), None)
    if compare_higher and maml is None:
        raise ValueError("--compare-higher compares against second-order MAML: include maml in --algos")
    work = Workload.of(variants)
    timers, episodes = _timers(work, maml if compare_higher else None)

    load_before = os.getloadavg()[0]
    times = interleave(timers, repeats, warmup, work.device, on_round)
    load_after = os.getloadavg()[0]
    out_of_memory = times.attrs["out_of_memory"]
    if not set(out_of_memory) <= set(variants):
        raise ValueError(f"{', '.join(n for n in out_of_memory if n not in variants)} ran out of memory on {work.device}")
    if len(out_of_memory) == len(variants):
        raise ValueError(f"every variant ran out of memory on {work.device}: {', '.join(out_of_memory)}")
    _, baseline_flops = counting_flops(timers["B"])

    rows = [_meta_step_row(work, times, baseline_flops, label, out_of_memory) for label in variants]
    higher = None
    if compare_higher:
        row, higher = _against_higher(work, times, baseline_flops, maml)
        rows.append(row)
    if memory:
        measured = [row for row in rows if row["error"] is None]
        probes = [(variants[maml], True) if row["variant"] == HIGHER else (variants[row["variant"]], False) for row in measured]
        for row, peak in zip(measured, meta_step_memory(probes)):
            row["peak_mem_mb"] = peak

    median = medians(times)
    return {
        "settings": _settings(work, repeats, warmup, [load_before, load_after], memory),
        "collapse": _collapse(work, rows),
        "baseline": {
            "seconds": float(median["B"]),
            "images": work.batch.tasks * variants[work.first].k,
            "flops": baseline_flops,
            "task_by_task_seconds": float(median["B task by task"]),
            "task_by_task_ratio": float(round_ratios(times, "B task by task", "B").median()),
        },
        "meta_steps": rows,
        "evaluation": _evaluation(work, times, episodes),
        "data": _sampling(times, rows),
        "higher": higher,
        "times": times.to_dict("records"),
    }


def _timers(work: Workload, higher_against: str | None) -> tuple[dict[str, Callable[[], Any]], TaskBatch]:
    """Everything timed, in the order of the rounds: B two ways, each variant's meta-step, second-order MAML
    through ``higher`` against variant ``higher_against`` (unless None), meta-batch sampling, and evaluation
    batched and one by one. Also returns the evaluation episodes."""
    reference, first = work.algos[work.first], work.variants[work.first]
    timers: dict[str, Callable[[], Any]] = {
        "B": baseline_pass(reference, work.params, work.batch),
        "B task by task": baseline_pass(reference, work.params, work.batch, task_by_task=True),
    }
    timers |= {label: work.meta_step(label) for label in work.variants}
    if higher_against is not None:
        timers[HIGHER] = lambda: higher_meta_step(work.algos[higher_against], work.states[higher_against], work.batch)

    # sampling: a new meta-step's tasks every call, as in training, once the reader's in-memory caches hold what
    # the first meta-steps read (steady state; the first touch of each image is paid once per run)
    for step in range(1, SAMPLER_WARMUP_STEPS + 1):
        meta_batch(first, work.data, step)
    steps = itertools.count(SAMPLER_WARMUP_STEPS + 1)
    timers["sample meta-batch"] = lambda: meta_batch(first, work.data, next(steps))
    state = work.states[work.first]
    episodes = evaluation_batch(first, work.data, first.eval_batch).to(work.device)
    singles = one_by_one(episodes)
    timers["evaluate batched"] = lambda: adapt_and_score(reference, state, episodes)
    timers["evaluate one by one"] = lambda: [adapt_and_score(reference, state, single) for single in singles]
    return timers, episodes


def _row(label: str, config: RunConfig, task_batching: str, times: pd.DataFrame | None = None, passes: int = 0,
         flops: int = 0, baseline_flops: int = 1, error: str | None = None) -> dict[str, Any]:
    """A ``meta_steps`` row (:data:`ROW_FIELDS`): timing fields and the FLOP ratio from ``times`` and the counts,
    or only ``error`` where the variant could not be timed."""
    row = dict.fromkeys(ROW_FIELDS) | {
        "variant": label, "algo": config.algo, "inner_steps": config.inner_steps, "task_batching": task_batching,
        "error": error,
    }
    if times is not None:
        ratios = round_ratios(times, label, "B", config.inner_steps + 1)
        row |= {
            "passes": passes, "seconds": float(medians(times)[label]), "ratio_to_n1B": float(ratios.median()),
            "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
            "flops_to_n1B": flops / ((config.inner_steps + 1) * baseline_flops),
        }
    return row


def _meta_step_row(work: Workload, times: pd.DataFrame, baseline_flops: int, label: str, out_of_memory: list[str]) -> dict[str, Any]:
    config, algo = work.variants[label], work.algos[label]
    task_batching = algo.resolved_task_batching(tuple(work.batch))
    if label in out_of_memory:
        return _row(label, config, task_batching, error="out of memory")
    (_, metrics), flops = counting_flops(work.meta_step(label))
    return _row(label, config, task_batching, times, int(metrics["passes"]), flops, baseline_flops)


def _against_higher(work: Workload, times: pd.DataFrame, baseline_flops: int, maml: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``higher`` row, and how our MAML compares with it: time per round, and the meta-gradient."""
    config, algo, state = work.variants[maml], work.algos[maml], work.states[maml]
    ours_over_higher = round_ratios(times, maml, HIGHER)
    ours = meta_gradient(algo, state, work.batch)
    (theirs, _), flops = counting_flops(lambda: higher_meta_gradient(algo, state.params, work.batch))
    row = _row(HIGHER, config, "loop", times, config.inner_steps + 1, flops, baseline_flops)
    return row, {
        "against": maml,
        "ours_over_higher_median": float(ours_over_higher.median()),
        "rounds_ours_faster": int((ours_over_higher < 1).sum()),
        "rounds": int(len(ours_over_higher)),
        "gradient": gradient_agreement(ours, theirs),
    }


def _settings(work: Workload, repeats: int, warmup: int, load_average: list[float], memory: bool) -> dict[str, Any]:
    first = work.variants[work.first]
    return {
        "repeats": repeats,
        "warmup": warmup,
        "device": str(work.device),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": load_average,  # 1-minute load before and after the timing rounds
        "memory_method": MEMORY_METHODS[work.device.type] if memory else None,
        "tasks": work.batch.tasks,
        "k": first.k,
        "query_size": first.query_size,
        "image_size": list(work.batch.support_x.shape[-2:]),
        "parameters": sum(p.numel() for p in work.params.values()),
    }


def _collapse(work: Workload, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each timed variant's collapse detector (:func:`benchmark.observations.collapse`) on the evaluation episodes,
    adapted from the variant's initial meta-state (bench meta-trains nothing, so it tells whether adaptation from
    the start already marks everything as cell): episodes predicted more than 95% cell before and after adapting,
    and the mean fraction of query pixels predicted cell."""
    found = {}
    for row in rows:
        label = row["variant"]
        if row["error"] is not None or label not in work.variants:
            continue
        config = work.variants[label]
        plan = [(config.holdout, HELD_OUT, config.eval_batch)]
        records, _, _ = evaluate(config, work.data, work.algos[label], work.states[label], work.device, None, plan=plan, references=False)
        episodes = per_episode(records)
        fraction = episodes.groupby("step").predicted_foreground.mean()
        found[label] = collapse(episodes) | {
            "foreground_before": float(fraction.iloc[0]), "foreground_after": float(fraction.iloc[-1]),
        }
    return found


def _evaluation(work: Workload, times: pd.DataFrame, episodes: TaskBatch) -> dict[str, Any]:
    """Evaluation throughput, batched and one by one, and how far the two ways' IoUs are apart."""
    algo, state = work.algos[work.first], work.states[work.first]
    batched = adapt_and_score(algo, state, episodes)
    singles = torch.cat([adapt_and_score(algo, state, single) for single in one_by_one(episodes)], dim=1)
    median = medians(times)
    return {
        "episodes": episodes.tasks,
        "batched_eps_per_s": episodes.tasks / float(median["evaluate batched"]),
        "one_by_one_eps_per_s": episodes.tasks / float(median["evaluate one by one"]),
        "speedup": float(round_ratios(times, "evaluate one by one", "evaluate batched").median()),
        "max_iou_diff": float((batched - singles).abs().max()),
    }


def _sampling(times: pd.DataFrame, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Meta-batches sampled per second against the fastest variant's meta-steps per second."""
    sample = float(medians(times)["sample meta-batch"])
    fastest = min((row for row in rows if row["error"] is None), key=lambda row: row["seconds"])
    return {
        "batches_per_s": 1 / sample,
        "fastest_variant": fastest["variant"],
        "meta_steps_per_s": 1 / fastest["seconds"],
        "headroom": fastest["seconds"] / sample,
    }


def costs(result: dict[str, Any], variants: dict[str, RunConfig]) -> Iterable[tuple[RunConfig, float, float]]:
    """(configuration, seconds per training step, seconds per evaluation episode) of every variant of a
    :func:`measure` result: a training step is a meta-step plus sampling its tasks, as ``run`` does; evaluation
    episodes are adapted ``eval_batch`` at a time, as ``run`` does."""
    sample = 1 / result["data"]["batches_per_s"]
    episode = 1 / result["evaluation"]["batched_eps_per_s"]
    for row in result["meta_steps"]:
        config = variants.get(row["variant"])
        if config is not None and row["error"] is None:
            yield config, row["seconds"] + sample, episode
