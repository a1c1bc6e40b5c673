"""Execute runs through the store: skip finished ones, resume interrupted ones, record failures.

``execute(config, store)`` is what ``run`` calls directly and what ``sweep`` sends to each worker process.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rich.progress import Progress

from benchmark import observations
from benchmark.config import RunConfig
from benchmark.errors import RunFailed
from benchmark.evaluation import SEED_PROTOCOL, TUNED_PROTOCOL
from benchmark.observations import HELD_OUT, SEEN, per_image
from benchmark.runner import RunResult, prepare, run
from benchmark.store import Store, image_scores
from tasks.errors import DataError


def headline(result: RunResult) -> dict[str, Any]:
    """The numbers a person looks at first, under the seed protocol (the algorithm's own adaptation): held-out
    IoU after adaptation with its 95% interval over test images, before adaptation, on seen lines, the same for
    each reference on the same episodes, and the collapse counts (``observations.collapse``); and under
    ``tuned``, the algorithm's at the adaptation rate selected on validation data, with the selection."""
    records = result.observations
    seed = records[records.protocol == SEED_PROTOCOL]
    own, references = seed[~seed.reference], seed[seed.reference]
    summary = _held_out(own)
    summary["collapse"] = observations.collapse(observations.per_episode(own))
    summary["references"] = {name: _held_out(references[references.method == name]) for name in observations.REFERENCES}
    if result.rate_selection is not None:
        tuned = _held_out(records[(records.protocol == TUNED_PROTOCOL) & ~records.reference])
        summary["tuned"] = {"adaptation_rate": result.rate_selection.to_dict(), **tuned}
    return summary


def _held_out(rows) -> dict[str, Any]:
    images = per_image(rows)
    held = images[images.role == HELD_OUT]
    interval, step0 = image_scores(held)
    seen = images[(images.role == SEEN) & (images.step == images.step.max())]
    return {
        "heldout_iou": interval.mean,
        "heldout_ci": [interval.low, interval.high],
        "heldout_step0_iou": step0,
        "seen_iou": float(np.average(seen.iou, weights=seen.crops)) if len(seen) else None,
        "images": int(held.image_id.nunique()),
        "episodes": int(rows[rows.role == HELD_OUT].episode.nunique()),
    }


def execute(config: RunConfig, store: Store, *, force: bool = False, progress: Progress | None = None) -> dict:
    """Run ``config`` unless the store already holds it finished; return its summary (``skipped`` marks a hit).

    Inputs are checked (device, data, algorithm) before anything is written: a run that cannot start leaves no
    record; one that started and failed is recorded as failed."""
    if store.is_complete(config.run_id) and not force:
        return {**store.summary(config.run_id), "skipped": True}
    prepare(config)
    store.start(config, fresh=force)
    resume = store.resume_point(config)
    started = time.perf_counter()
    try:
        result = run(
            config,
            resume=resume,
            on_checkpoint=lambda algo, state, log: store.checkpoint(config, algo, state, log),
            progress=progress,
        )
    except Exception as err:  # recorded as failed; an interrupt (KeyboardInterrupt) leaves the checkpoints to resume
        store.fail(config, str(err) if isinstance(err, (RunFailed, DataError)) else f"{type(err).__name__}: {err}", time.perf_counter() - started)
        raise
    store.finish(result, headline(result))
    return {**store.summary(config.run_id), "skipped": False, "resumed_from": resume[0].step if resume else 0}
