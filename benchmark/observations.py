"""What an evaluation records, and the collapse detector over it.

Records are tidy: one row per line x episode x query image x adaptation step x method, where the method is
the run's algorithm or one of the references (:data:`REFERENCES`, :mod:`benchmark.references`) scored on the
same episodes. A
classical reference does not adapt: it has one row per query image, at step 0. Every row also holds the
fraction of the query image's pixels predicted as cell, the collapse detector: a model that marks (nearly)
everything as cell scores the ``all-foreground`` reference's IoU whatever it has learnt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd


if TYPE_CHECKING:  # the report reads these names without loading torch
    import torch

HELD_OUT, SEEN = "held-out", "seen"
SEED_PROTOCOL, TUNED_PROTOCOL = "seed", "tuned"  # the algorithm's own adaptation; at the rate selected on validation
CLASSICAL_REFERENCES = ("all-foreground", "otsu", "otsu-texture")  # computed by benchmark.references
SCRATCH = "scratch"  # the untrained initialisation, adapted like the algorithm
REFERENCES = (*CLASSICAL_REFERENCES, SCRATCH)
RUN_COLUMNS = ("run_id", "algo", "holdout", "k", "seed")
ROW_COLUMNS = ("method", "reference", "line", "role", "episode", "query", "image_id", "step", "iou", "predicted_foreground")
PER_QUERY = ("query", "image_id")  # averaged away in the per-episode table
VALUES = ("iou", "predicted_foreground")
RECORD_FORMAT = "%.9g"  # compact records' values: float32 IoUs (9 digits hold one exactly) and their means
COLLAPSE_FOREGROUND = 0.95  # an episode whose queries are predicted this much cell, on average, has collapsed


def record_rows(
    method: str, line: str, role: str, episodes: Sequence[int], query_ids: Sequence[Sequence[int]], step: int,
    scores: torch.Tensor, foreground: torch.Tensor,
) -> dict[str, np.ndarray]:
    """The rows of one method's predictions at one step for a batch of E episodes of q queries each.

    ``episodes``: the E episode indices; ``query_ids``: their query image ids; ``scores``: query IoU [E, q];
    ``foreground``: the fraction of each query's pixels predicted as cell [E, q] (:func:`foreground_fraction`).
    """
    count, queries = scores.shape
    size = count * queries
    return {
        "method": np.full(size, method, dtype=object),
        "reference": np.full(size, method in REFERENCES),
        "line": np.full(size, line, dtype=object),
        "role": np.full(size, role, dtype=object),
        "episode": np.repeat(np.asarray(episodes, dtype=np.int64), queries),
        "query": np.tile(np.arange(queries, dtype=np.int64), count),
        "image_id": np.asarray(query_ids, dtype=np.int64).reshape(size),
        "step": np.full(size, step, dtype=np.int64),
        "iou": scores.cpu().double().numpy().reshape(size),  # float32 values, held exactly
        "predicted_foreground": foreground.cpu().numpy().reshape(size),
    }


def foreground_fraction(logits: torch.Tensor) -> torch.Tensor:
    """[E, q] fraction of each query's pixels predicted as cell (logit > 0), from logits [E, q, 1, H, W]."""
    return (logits > 0).flatten(2).double().mean(dim=2)


def record_table(blocks: Sequence[dict[str, np.ndarray]], run: dict[str, object]) -> pd.DataFrame:
    """All rows of a run, in the order given, each with the run's identity (``RUN_COLUMNS``) in front."""
    frame = pd.DataFrame({name: np.concatenate([block[name] for block in blocks]) if blocks else [] for name in ROW_COLUMNS})
    for position, name in enumerate(RUN_COLUMNS):
        frame.insert(position, name, run[name])
    return frame


def per_episode(observations: pd.DataFrame) -> pd.DataFrame:
    """The compact table: each value averaged over an episode's query images."""
    keys = [c for c in observations.columns if c not in (*PER_QUERY, *VALUES)]
    return observations.groupby(keys, sort=False, as_index=False)[list(VALUES)].mean()


def per_image(observations: pd.DataFrame) -> pd.DataFrame:
    """IoU averaged over each query image's crops (``crops`` of them) per line x image x step: what the report's
    statistics need, since test images, not episodes, are the independent units. (The collapse detector's
    foreground fraction is kept per episode, :func:`per_episode`.)"""
    keys = [c for c in observations.columns if c not in ("episode", "query", *VALUES)]
    return observations.groupby(keys, sort=False, as_index=False).agg(iou=("iou", "mean"), crops=("iou", "size"))


def compact(records: pd.DataFrame) -> pd.DataFrame:
    """A record table's committed form: the references' rows once, under the seed protocol. They do not depend
    on the algorithm's rate, and the protocols' tables (``evaluation.evaluate_protocols``) repeat them under each;
    a reader takes them for every protocol (``report.records``)."""
    if "protocol" not in records.columns or "reference" not in records.columns:
        return records
    return records[~records["reference"] | (records["protocol"] == SEED_PROTOCOL)]


def collapse(episodes: pd.DataFrame) -> dict:
    """Held-out episodes whose queries are predicted more than :data:`COLLAPSE_FOREGROUND` cell, on average,
    before adaptation (step 0) and after it (the last step)."""
    held_out = episodes[episodes.role == HELD_OUT]
    count = lambda step: int((held_out[held_out.step == step].predicted_foreground > COLLAPSE_FOREGROUND).sum())  # noqa: E731
    return {
        "threshold": COLLAPSE_FOREGROUND,
        "before": count(0),
        "after": count(held_out.step.max()),
        "episodes": int(held_out.episode.nunique()),
    }


def collapsed(summary: dict) -> bool:
    """Whether a run's algorithm predicts (nearly) all cell on most held-out episodes after adaptation."""
    found = summary.get("collapse")
    return bool(found) and found["after"] > found["episodes"] / 2
