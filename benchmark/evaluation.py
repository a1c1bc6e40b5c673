"""Evaluation: adapt from k support images and score every query image, for the algorithm and the references,
under the seed protocol and at the rate selected on validation data.

Evaluation episodes are a function of (data, seed, k, crop, queries) alone, so every algorithm is scored on the
same ones; the records are tidy rows (:mod:`benchmark.observations`).
"""

from __future__ import annotations

import functools
import hashlib
import pickle

import numpy as np
import pandas as pd
import torch

from algorithms import Algorithm, MetaState
from algorithms.adaptation import Adaptation
from algorithms.losses import iou
from algorithms.state import move_state
from benchmark.config import RunConfig
from benchmark.machine import processor
from benchmark.numerics import current_fingerprint
from benchmark.observations import (
    HELD_OUT, SCRATCH, SEED_PROTOCOL, SEEN, TUNED_PROTOCOL, foreground_fraction, record_rows, record_table,
)
from benchmark.references import CLASSICAL
from benchmark.validation import RateSelection
from tasks.batch import TaskBatch
from tasks.cache import atomic_write, cache_root
from tasks.episodes import sample_episode, stack_episodes
from tasks.livecell import LiveCell

EVAL_SPLIT = "test"
EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes use their own stream, shared by all algorithms


def evaluation_plan(config: RunConfig) -> list[tuple[str, str, int]]:
    """(line, role, episodes): the held-out line first, then every meta-training line's test split."""
    plan = [(config.holdout, HELD_OUT, config.eval_episodes)]
    if config.seen_episodes:
        plan += [(line, SEEN, config.seen_episodes) for line in config.training_lines]
    return plan


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


def reference_scores(config: RunConfig, algo: Algorithm, scratch: MetaState, batch: TaskBatch) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """(method, step, query IoU [E, q], predicted foreground [E, q]) of every reference on a batch of episodes:
    each classical one, and ``scratch`` (the untrained state) adapted with the shared protocol (n plain steps at
    the inner rate, whatever the algorithm's own adaptation), so the references are the same for every algorithm.

    Scratch's adaptation costs as much as the algorithm's own evaluation, and every algorithm of a sweep scores
    the same episodes; so the answer is kept in the cache (:func:`reference_key`: a hash of everything it is
    computed from) and the runs after the first read it."""
    path = cache_root() / "references" / f"{reference_key(config, scratch, batch)}.pt"
    try:
        return torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        pass  # absent (or unreadable): computed below
    computed = []
    for name, predict in CLASSICAL.items():
        logits = predict(batch.support_x, batch.support_y, batch.query_x)
        computed.append((name, 0, query_iou(logits, batch.query_y).cpu(), foreground_fraction(logits).cpu()))
    shared = Adaptation(steps=config.inner_steps, rate=config.inner_lr)
    for step, logits, scores in scored_steps(algo, scratch, batch, shared):
        computed.append((SCRATCH, step, scores.cpu(), foreground_fraction(logits).cpu()))
    atomic_write(path, lambda f: torch.save(computed, f))
    return computed


def reference_key(config: RunConfig, scratch: MetaState, batch: TaskBatch) -> str:
    """sha256 of what the references of a batch are computed from: the episodes' tensors, the untrained
    parameters and the model that applies them (its settings: normalisation leaves the parameters alike), the
    shared protocol (steps, rate, loss), the threads, the device and processor (their kernels differ in the last
    bits), torch's version and the code that computes them (:func:`benchmark.numerics.current_fingerprint`)."""
    digest = hashlib.sha256()
    device = batch.support_x.device
    settings = (
        current_fingerprint(), torch.__version__, sorted(config.part("model").items()), config.inner_steps, config.inner_lr,
        config.loss, config.threads, str(device), processor(device),
    )
    digest.update(repr(settings).encode())
    tensors = [batch.support_x, batch.support_y, batch.query_x, batch.query_y]
    tensors += [scratch.params[name] for name in sorted(scratch.params)]
    for tensor in tensors:
        digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


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
    and, with ``references``, the references (:func:`reference_scores`), as tidy rows (:mod:`benchmark.observations`).

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
            for step, logits, scores in scored_steps(algo, state, batch, adaptation):
                blocks.append(record_rows(config.algo, line, role, indices, query_ids, step, scores, foreground_fraction(logits)))
                if on_final is not None and step == config.inner_steps:
                    on_final(line, indices, episodes, logits)
                if role == HELD_OUT and first == 0 and step == config.inner_steps:
                    examples = example_arrays(batch, logits)
            if scratch is not None:
                for method, step, scores, foreground in reference_scores(config, algo, scratch, batch):
                    blocks.append(record_rows(method, line, role, indices, query_ids, step, scores, foreground))
            if progress:
                progress.update(task, advance=len(episodes), description=f"evaluate {line}")
    run_columns = {"run_id": config.run_id, "algo": config.algo, "holdout": config.holdout, "k": config.k, "seed": config.seed}
    return record_table(blocks, run_columns), manifests, examples


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
