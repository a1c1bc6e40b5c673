"""One run of the benchmark: meta-train on seven lines, evaluate on all eight.

``run(config) -> RunResult`` is a pure function of the configuration (plus an optional meta-state to resume
from): it reads data, computes, and returns records. It writes no files; the store does, through the
``on_checkpoint`` callback and after the run. Any executor (in-process, process pool, a cluster) calls this.
"""

from __future__ import annotations

import functools
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
from algorithms.adaptation import Adaptation
from algorithms.losses import iou
from benchmark.config import RunConfig
from benchmark.errors import RunFailed
from benchmark.observations import HELD_OUT, SCRATCH, SEEN, per_episode, record_rows, record_table
from benchmark.references import CLASSICAL
from benchmark.validation import RateSelection, adapted_iou, select_rate, validation_batch
from tasks.batch import TaskBatch
from tasks.catalogue import LINES, cell_line
from tasks.episodes import sample_episode, stack_episodes
from tasks.livecell import LiveCell, open_livecell

SEED_PROTOCOL, TUNED_PROTOCOL = "seed", "tuned"  # the algorithm's own adaptation; at the rate selected on validation
EVAL_SPLIT = "test"
TRAIN_SPLIT = "train"
EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes use their own stream, shared by all algorithms


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

    @property
    def passes(self) -> int:
        """Forward-backward passes spent in meta-training (the budget the baselines are matched on)."""
        return sum(entry["passes"] for entry in self.train_log)

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


def training_lines(config: RunConfig) -> list[str]:
    return [line.name for line in LINES if line.name != config.holdout]


def check_feasible(config: RunConfig, data: LiveCell) -> None:
    """Fail before any compute if the data cannot serve the episodes the configuration asks for."""
    needs = [(config.holdout, EVAL_SPLIT, config.k + config.eval_queries)]
    needs += [(line, TRAIN_SPLIT, config.k + config.query_size) for line in training_lines(config)]
    if config.seen_episodes:
        needs += [(line, EVAL_SPLIT, config.k + config.eval_queries) for line in training_lines(config)]
    for line, split, wanted in needs:
        have = len(data.images(cell_line(line), split))
        if have < wanted:
            raise RunFailed(
                f"{line} has {have} {split} images in {data.root}, but k={config.k} support plus "
                f"{wanted - config.k} query images need {wanted}"
            )


def meta_batch(config: RunConfig, data: LiveCell, step: int) -> TaskBatch:
    """The tasks of meta-step ``step``: a function of (seed, step) alone, so a resumed run sees the same data."""
    lines = training_lines(config)
    episodes = []
    for t in range(config.meta_batch):
        index = step * config.meta_batch + t
        line = lines[index % len(lines)]
        episodes.append(
            sample_episode(data, line, TRAIN_SPLIT, config.k, config.query_size, config.crop, config.seed, index)
        )
    return stack_episodes(episodes)


def evaluation_plan(config: RunConfig) -> list[tuple[str, str, int]]:
    """(line, role, episodes): the held-out line first, then every meta-training line's test split."""
    plan = [(config.holdout, HELD_OUT, config.eval_episodes)]
    if config.seen_episodes:
        plan += [(line, SEEN, config.seen_episodes) for line in training_lines(config)]
    return plan


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
        data, training_lines(config), config.k, config.eval_queries, config.crop, config.seed, config.validation_episodes
    )
    return batch.to(device)


def trained_seconds(log: list[dict]) -> float:
    """Meta-training seconds recorded up to the last logged step (0 for logs written before wall_s was)."""
    wall = log[-1].get("wall_s") if log else None
    return float(wall) if wall is not None and math.isfinite(wall) else 0.0


def evaluation_episodes(config: RunConfig, data: LiveCell, line: str, indices: range, split: str = EVAL_SPLIT) -> list:
    """Evaluation episodes ``indices`` of ``line``: a function of (data, seed, k, crop, queries) alone, so every
    algorithm is scored on the same ones; episodes of the same index at k = 1 and k = 3 share their query crops
    (:func:`tasks.episodes.sample_episode`), so the effect of k is paired too."""
    seed = EVAL_SEED_OFFSET + config.seed
    return [sample_episode(data, line, split, config.k, config.eval_queries, config.crop, seed, i) for i in indices]


def query_iou(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU [E, q] of query predictions ``logits`` against ``truth``, both [E, q, 1, H, W]."""
    return iou(logits.flatten(0, 1), truth.flatten(0, 1)).reshape(logits.shape[:2])


def scored_steps(algo: Algorithm, state: MetaState, batch: TaskBatch, adaptation: Adaptation | None = None):
    """Adapt E episodes together (with the algorithm's own adaptation unless one is given); yield (step, query
    logits [E, q, 1, H, W], query IoU [E, q]) for steps 0..n."""
    for step, params in algo.adapt(state, batch.support_x, batch.support_y, adaptation):
        logits = algo.predict(params, batch.query_x)
        yield step, logits, query_iou(logits, batch.query_y)


def predictions(
    config: RunConfig, algo: Algorithm, state: MetaState, batch: TaskBatch, adaptation: Adaptation | None = None,
    scratch: MetaState | None = None,
):
    """Yield (method, step, query logits, query IoU) for a batch of episodes: the algorithm adapted from ``state``
    (steps 0..n, with ``adaptation``, default its own), then, given the untrained ``scratch`` state, the
    references: each classical one, and ``scratch`` adapted with the shared protocol (n plain steps at the inner
    rate, whatever the algorithm's own adaptation), so the references are the same for every algorithm."""
    for step, logits, scores in scored_steps(algo, state, batch, adaptation):
        yield config.algo, step, logits, scores
    if scratch is None:
        return
    for name, predict in CLASSICAL.items():
        logits = predict(batch.support_x, batch.support_y, batch.query_x)
        yield name, 0, logits, query_iou(logits, batch.query_y)
    shared = Adaptation(steps=config.inner_steps, rate=config.inner_lr)
    for step, logits, scores in scored_steps(algo, scratch, batch, shared):
        yield SCRATCH, step, logits, scores


def example_arrays(batch: TaskBatch, logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Images, truth and predictions of the batch's first episode, for the report's example grid."""
    return {
        "image": (batch.query_x[0, :, 0] * 255).round().to(torch.uint8).cpu().numpy(),
        "truth": batch.query_y[0, :, 0].bool().cpu().numpy(),
        "prediction": (logits[0, :, 0] > 0).cpu().numpy(),
    }


def evaluate(
    config, data, algo, state, device, progress, adaptation: Adaptation | None = None, plan=None, split=EVAL_SPLIT,
    on_final=None, references: bool = True,
) -> tuple[pd.DataFrame, list[dict], dict[str, np.ndarray]]:
    """Adapt from k support images and record every query image's IoU at every step 0..n, for the algorithm
    and, with ``references``, the references (:func:`predictions`), as tidy rows (:mod:`benchmark.observations`).

    Episodes are adapted ``eval_batch`` at a time (vmap over episodes inside ``algo.adapt``), with the
    algorithm's own adaptation unless ``adaptation`` is given (a rate selected on validation data). ``plan``
    (default :func:`evaluation_plan`), ``split`` and ``on_final(line, indices, episodes, logits)``, called with each
    batch's query logits after the last step, serve ``python -m benchmark evaluate`` (a finished run on other data).
    """
    plan = evaluation_plan(config) if plan is None else plan
    task = progress.add_task("evaluate", total=sum(n for _, _, n in plan)) if progress else None
    scratch = move_state(algo.init_state(algo.model.init(config.seed)), device) if references else None
    blocks: list[dict[str, np.ndarray]] = []
    manifests: list[dict] = []
    examples: dict[str, np.ndarray] = {}
    for line, role, count in plan:
        for first in range(0, count, config.eval_batch):
            indices = range(first, min(count, first + config.eval_batch))
            episodes = evaluation_episodes(config, data, line, indices, split)
            manifests += [ep.manifest.to_dict() for ep in episodes]
            query_ids = [[image_id for image_id, _ in ep.manifest.query] for ep in episodes]
            batch = stack_episodes(episodes).to(device)
            for method, step, logits, scores in predictions(config, algo, state, batch, adaptation=adaptation, scratch=scratch):
                blocks.append(record_rows(method, line, role, indices, query_ids, step, scores, logits))
                if method == config.algo and on_final is not None and step == config.inner_steps:
                    on_final(line, indices, episodes, logits)
                if method == config.algo and role == HELD_OUT and first == 0 and step == config.inner_steps:
                    examples = example_arrays(batch, logits)
            if progress:
                progress.update(task, advance=len(episodes), description=f"evaluate {line}")
    run_columns = {"run_id": config.run_id, "algo": config.algo, "holdout": config.holdout, "k": config.k, "seed": config.seed}
    return record_table(blocks, run_columns), manifests, examples


def prepare(config: RunConfig) -> tuple[torch.device, LiveCell, Algorithm]:
    """Everything a run needs before any compute, each failure a one-line error: the device, the data (able to
    serve the configuration's episodes) and the algorithm. ``execute`` calls it before it records anything, so an
    input error leaves no run behind."""
    device = device_of(config)
    data = open_livecell(config.data_root)
    check_feasible(config, data)
    return device, data, build(config)


def evaluate_protocols(config, data, algo, state, device, progress, selection: RateSelection | None, on_final=None, **where):
    """:func:`evaluate` under the seed protocol (the algorithm's own adaptation: n steps at the inner rate, as
    published) and, where a rate was selected on validation data, the tuned protocol (the same steps at that
    rate); rows are marked by ``protocol``. Where the selected rate is the algorithm's own, or the algorithm
    learns its rates, the tuned rows are the seed rows. The references do not depend on the algorithm's rate:
    computed once, their rows stand under both protocols. ``where`` (plan, split) and ``on_final(protocol, ...)``
    pass on to :func:`evaluate` (``python -m benchmark evaluate``)."""
    final = {name: on_final and functools.partial(on_final, name) for name in (SEED_PROTOCOL, TUNED_PROTOCOL)}
    observations, manifests, examples = evaluate(config, data, algo, state, device, progress, on_final=final[SEED_PROTOCOL], **where)
    observations.insert(observations.columns.get_loc("line"), "protocol", SEED_PROTOCOL)
    if selection is None:
        return observations, manifests, examples
    if selection.rate is None or selection.rate == algo.adaptation.rate:
        tuned = observations.copy()
    else:
        adaptation = algo.adaptation.with_rate(selection.rate)
        own, _, _ = evaluate(
            config, data, algo, state, device, progress, adaptation, on_final=final[TUNED_PROTOCOL], references=False, **where
        )
        own.insert(observations.columns.get_loc("protocol"), "protocol", SEED_PROTOCOL)
        tuned = pd.concat([own, observations[observations["reference"]]], ignore_index=True)
    tuned["protocol"] = TUNED_PROTOCOL
    return pd.concat([observations, tuned], ignore_index=True), manifests, examples


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
    )
