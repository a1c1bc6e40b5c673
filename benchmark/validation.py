"""Validation episodes of the meta-training lines: the only data a run tunes on or tracks its budget with.

They come from the ``val`` split of the lines the run meta-trains on, never from the held-out line and never
from a test image, so choosing each algorithm's adaptation rate on them is fair to every algorithm alike and
tells the held-out score nothing. Episodes cycle through the lines and use their own seed stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from algorithms import Algorithm, MetaState
from algorithms.losses import iou
from benchmark.errors import RunFailed
from tasks.batch import TaskBatch
from tasks.episodes import sample_episode, stack_episodes

VAL_SPLIT = "val"
VALIDATION_SEED_OFFSET = 2_000_003  # a stream of its own, apart from meta-training's and evaluation's


def validation_queries(data, lines: list[str], k: int, wanted: int) -> int:
    """Query images per validation episode: ``wanted``, or fewer where a line's val split is small."""
    smallest = min(len(data.images(line, VAL_SPLIT)) for line in lines)
    if smallest < k + 1:
        raise RunFailed(f"a val split has {smallest} images, too few for k={k} support plus one query image")
    return min(wanted, smallest - k)


def validation_batch(data, lines: list[str], k: int, queries: int, crop: int | None, seed: int, count: int) -> TaskBatch:
    """``count`` episodes of the val splits of ``lines``, the same for every algorithm with this seed and k."""
    q = validation_queries(data, lines, k, queries)
    episodes = [
        sample_episode(data, lines[i % len(lines)], VAL_SPLIT, k, q, crop, VALIDATION_SEED_OFFSET + seed, i)
        for i in range(count)
    ]
    return stack_episodes(episodes)


def adapted_iou(algo: Algorithm, state: MetaState, batch: TaskBatch, adaptation=None) -> tuple[float, float]:
    """Mean query IoU over the batch's episodes before adaptation and after its last step."""
    before = after = float("nan")
    for step, params in algo.adapt(state, batch.support_x, batch.support_y, adaptation):
        if step == 0 or step == (adaptation or algo.adaptation).steps:
            logits = algo.predict(params, batch.query_x)
            score = float(iou(logits.flatten(0, 1), batch.query_y.flatten(0, 1)).mean())
            before, after = (score, score) if step == 0 else (before, score)
    return before, after


@dataclass(frozen=True)
class RateSelection:
    rate: float | None  # None: the algorithm's adaptation has no single rate to select (learned rates)
    scores: dict[float, float]  # validation IoU after the last adaptation step, per candidate rate
    episodes: int
    seconds: float

    def to_dict(self) -> dict:
        return {
            "rate": self.rate,
            "scores": {str(rate): round(score, 6) for rate, score in self.scores.items()},
            "episodes": self.episodes,
            "seconds": round(self.seconds, 2),
        }


def selects_rate(algo: Algorithm) -> bool:
    """Whether ``algo`` has one adaptation rate to select (one that learns its rates per parameter or step has not)."""
    return isinstance(algo.adaptation.rate, (int, float))


def select_rate(algo: Algorithm, state: MetaState, batch: TaskBatch, rates: tuple[float, ...]) -> RateSelection:
    """The candidate rate with the best validation IoU after the algorithm's n adaptation steps; ties go to the
    earlier candidate. An algorithm whose adaptation rate is not one number (learned per parameter or per step)
    keeps its own: the shared procedure is the same support data and the same number of steps."""
    started = time.perf_counter()
    if not selects_rate(algo):
        return RateSelection(None, {}, batch.tasks, 0.0)
    scores = {rate: adapted_iou(algo, state, batch, algo.adaptation.with_rate(rate))[1] for rate in rates}
    best = max(rates, key=lambda rate: (scores[rate], -rates.index(rate)))
    return RateSelection(best, scores, batch.tasks, time.perf_counter() - started)
