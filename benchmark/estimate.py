"""What a sweep will cost, before it starts.

A run's time is, to first order, ``meta_steps x t_step + adapted episodes x t_episode``: t_step is one
training step (sample the meta-batch's tasks, one meta-step), t_episode one evaluation episode (sample,
adapt with the others of its batch, score every step). A run adapts far more episodes than it evaluates
(:func:`adapted_episodes`): the validation episodes at every budget-curve point and once per candidate rate, the
evaluation episodes under both protocols, and the references' (the untrained model adapted on the same
episodes) where no earlier run of the sweep computed them; at the default preset that is more than half of a run.
Both costs depend on everything in the configuration except which line is held out and the seed, so one
measurement serves every run that differs only in those (a *cost class*, :func:`cost_key`). Each class is priced
by, in order of preference:

1. finished runs in the store with the same settings: the median of their recorded wall times;
2. timings handed in (``known``; ``bench`` passes the ones it just measured);
3. a quick calibration here: a warm-up and a few timed training steps, and one timed evaluation batch.

The estimate is for running the runs one after another with the threads this process has.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pandas as pd

from benchmark.config import RunConfig
from algorithms.state import move_state
from benchmark.evaluation import evaluation_plan
from benchmark.runner import build, device_of, meta_batch
from benchmark.store import COMPLETED, Store
from benchmark.validation import selects_rate

PER_RUN = ("holdout", "seed", "preset")  # settings that do not change a run's cost


@dataclass(frozen=True)
class Cost:
    """Seconds per training step and per evaluation episode of one cost class, and whether its algorithm selects
    an adaptation rate (one that learns its rates has none to select, and one protocol to evaluate)."""

    step_s: float
    episode_s: float
    selects_rate: bool = True


def cost_key(config: RunConfig | dict) -> str:
    """The configuration without the settings a run's cost does not depend on (see :data:`PER_RUN`)."""
    settings = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    settings = {k: v for k, v in settings.items() if k not in PER_RUN}
    return json.dumps(settings, sort_keys=True, default=str)


def evaluation_episodes(config: RunConfig) -> int:
    """Evaluation episodes of one run: the held-out line's plus each meta-training line's."""
    return sum(count for _, _, count in evaluation_plan(config))


def budget_points(config: RunConfig) -> int:
    """Budget-curve points of a run: step 0, every ``budget_every`` meta-steps and the last (as ``runner.meta_train``)."""
    if not config.budget_every:
        return 0
    return len({0, config.meta_steps, *range(config.budget_every, config.meta_steps + 1, config.budget_every)})


def adapted_episodes(config: RunConfig, selects_rate: bool = True, reference_episodes: int | None = None) -> int:
    """Episodes a run adapts after meta-training, each priced as an evaluation episode (validation episodes score
    only steps 0 and n, so this errs high): the validation episodes at every budget point and for every candidate
    rate, the evaluation episodes under the seed protocol and (where a rate is selected; counted even though a run
    whose selected rate is its own reuses the seed protocol's) the tuned one, and ``reference_episodes`` of the
    references' (default: all of its evaluation episodes, none cached)."""
    rates = len(config.adapt_rates) if config.adapt_rates and selects_rate else 0
    validation = config.validation_episodes * (budget_points(config) + rates)
    references = evaluation_episodes(config) if reference_episodes is None else reference_episodes
    return validation + evaluation_episodes(config) * (1 + (rates > 0)) + references


def run_seconds(config: RunConfig, cost: Cost, reference_episodes: int | None = None) -> float:
    """A run's seconds at ``cost``; ``reference_episodes``: how many of its evaluation episodes' references it
    computes (:func:`reference_batches`: those no earlier run of the sweep computed; default all)."""
    return config.meta_steps * cost.step_s + adapted_episodes(config, cost.selects_rate, reference_episodes) * cost.episode_s


def reference_batches(config: RunConfig) -> list[tuple]:
    """The batches of evaluation episodes whose references a run needs, each named by what its references are
    computed from (``evaluation.reference_key`` less the tensors, which these settings determine): the line and
    the episodes, k, seed, data, crop, queries, the model and the shared protocol, threads and device; with the
    batch's episode count last. A seen line's batches are the same whichever line is held out, so a sweep computes
    them once per (k, seed), and the cache serves the rest."""
    settings = (config.data_identity, config.crop, config.eval_queries, config.k, config.seed, config.inner_steps,
                config.inner_lr, config.loss, config.threads, config.device, json.dumps(config.part("model"), sort_keys=True, default=str))
    return [(*settings, line, first, min(count, first + config.eval_batch) - first)
            for line, _, count in evaluation_plan(config) for first in range(0, count, config.eval_batch)]


def stored_wall_times(store: Store) -> dict[str, list[float]]:
    """Recorded wall times of the store's finished runs, by cost class."""
    found: dict[str, list[float]] = {}
    for summary in store.summaries():
        if summary.get("status") == COMPLETED and summary.get("wall_s") is not None and "config" in summary:
            found.setdefault(cost_key(summary["config"]), []).append(float(summary["wall_s"]))
    return found


def calibrate(config: RunConfig, steps: int = 2, warmup: int = 1) -> Cost:
    """Time ``warmup + steps`` training steps (median of the last ``steps``) and one batch of evaluation
    episodes after a warm-up batch, on ``config``'s data, model and device."""
    from benchmark.bench import adapt_and_score, evaluation_batch, synchronize
    from tasks.livecell import open_livecell

    if steps < 1 or warmup < 0:
        raise ValueError(f"calibration needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = device_of(config)
    data = open_livecell(config.data_root)
    algo = build(config)
    state = move_state(algo.init_state(algo.model.init(config.seed)), device)

    def timed(fn: Callable[[], Any]) -> float:
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - started

    step_times = [timed(lambda i=i: algo.meta_step(state, meta_batch(config, data, i).to(device))) for i in range(warmup + steps)]
    count = config.eval_batch
    eval_times = [timed(lambda: adapt_and_score(algo, state, evaluation_batch(config, data, count).to(device))) for _ in range(2)]
    return Cost(step_s=statistics.median(step_times[warmup:]), episode_s=eval_times[-1] / count, selects_rate=selects_rate(algo))


def estimate_table(
    configs: Iterable[RunConfig],
    store: Store | None = None,
    known: dict[str, Cost] | None = None,
    on_calibrate: Callable[[RunConfig], None] | None = None,
) -> pd.DataFrame:
    """One row per run: ``run_id, algo, holdout, k, seed, seconds, source`` (``store``, ``measured`` or
    ``calibrated``). ``known``: costs already measured, by :func:`cost_key`; ``on_calibrate`` is told before
    each calibration (they take seconds)."""
    walls = stored_wall_times(store) if store is not None else {}
    costs = dict(known or {})
    sources = dict.fromkeys(costs, "measured")
    rows, referenced = [], set()
    for config in configs:
        key = cost_key(config)
        batches = [batch for batch in reference_batches(config) if batch not in referenced]
        referenced.update(batches)
        if key in walls:
            seconds, source = statistics.median(walls[key]), "store"
        else:
            if key not in costs:
                if on_calibrate:
                    on_calibrate(config)
                costs[key], sources[key] = calibrate(config), "calibrated"
            seconds, source = run_seconds(config, costs[key], sum(batch[-1] for batch in batches)), sources[key]
        rows.append(
            {"run_id": config.run_id, "algo": config.algo, "holdout": config.holdout, "k": config.k,
             "seed": config.seed, "seconds": seconds, "source": source}
        )
    return pd.DataFrame(rows, columns=["run_id", "algo", "holdout", "k", "seed", "seconds", "source"])


def estimate_sweep(configs: Iterable[RunConfig], store: Store | None) -> float:
    """Seconds to run every configuration in ``configs`` one after another (pass only the runs still to do)."""
    return float(estimate_table(configs, store).seconds.sum())


def known_costs(entries: Iterable[tuple[RunConfig, float, float]]) -> dict[str, Cost]:
    """``known`` for :func:`estimate_table` from (configuration, step seconds, episode seconds) triples."""
    return {cost_key(config): Cost(step_s, episode_s, selects_rate(build(config))) for config, step_s, episode_s in entries}


def format_duration(seconds: float) -> str:
    """``2 h 05 min``, ``12 min 30 s`` or ``8.0 s``."""
    if seconds >= 3600:
        hours, rest = divmod(round(seconds / 60), 60)
        return f"{hours} h {rest:02d} min"
    if seconds >= 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    return f"{seconds:.1f} s"

