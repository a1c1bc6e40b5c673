"""The tidy record builder, the collapse detector and `run`'s printed table, on fabricated predictions."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from rich.console import Console

from benchmark.commands.run import collapse_warning, facts_table, summary_table
from benchmark.observations import (
    COLLAPSE_FOREGROUND, REFERENCES, collapse, collapsed, compact, foreground_fraction, per_episode, per_image, record_rows,
    record_table,
)

RUN = {"run_id": "r", "algo": "maml", "holdout": "MCF7", "k": 1, "seed": 0}
NUMBERS = {"heldout_iou": 0.5, "heldout_ci": [0.4, 0.6], "heldout_step0_iou": 0.3, "seen_iou": None}


def test_rows_lay_out_episodes_queries_and_the_foreground_fraction():
    logits = -torch.ones(2, 3, 1, 4, 4)
    logits[0, 1, 0, :2] = 1.0  # half of episode 5's second query predicted cell
    logits[1] = 1.0  # all of episode 6's
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 1 / 3]])
    block = record_rows("maml", "MCF7", "held-out", [5, 6], [[10, 11, 12], [13, 14, 15]], 2, scores, foreground_fraction(logits))
    frame = record_table([block], RUN)
    assert list(frame.columns[:5]) == list(RUN)
    assert list(frame.episode) == [5, 5, 5, 6, 6, 6] and list(frame["query"]) == [0, 1, 2] * 2
    assert list(frame.image_id) == [10, 11, 12, 13, 14, 15]
    assert list(frame.predicted_foreground) == [0, 0.5, 0, 1, 1, 1]
    assert list(frame.iou) == [float(v) for v in scores.flatten()]  # the float32 values, exactly
    assert not frame.reference.any()
    assert record_rows("otsu", "MCF7", "held-out", [5, 6], [[10, 11, 12], [13, 14, 15]], 0, scores, foreground_fraction(logits))["reference"].all()


def _episodes(foreground_after: list[float], steps: int = 2) -> pd.DataFrame:
    rows = []
    for episode, after in enumerate(foreground_after):
        for step in range(steps + 1):
            rows.append({**RUN, "method": "maml", "reference": False, "line": "MCF7", "role": "held-out",
                         "episode": episode, "step": step, "iou": 0.3 + 0.1 * step, "predicted_foreground": 0.5 if step == 0 else after})
        for name in REFERENCES:
            for step in range(steps + 1 if name == "scratch" else 1):
                rows.append({**RUN, "method": name, "reference": True, "line": "MCF7", "role": "held-out",
                             "episode": episode, "step": step, "iou": 0.35, "predicted_foreground": 1.0})
    return pd.DataFrame(rows)


def test_collapse_counts_held_out_episodes_above_the_threshold_before_and_after():
    episodes = _episodes([1.0, 0.99, COLLAPSE_FOREGROUND, 0.2])
    found = collapse(episodes[~episodes.reference])
    assert found == {"threshold": COLLAPSE_FOREGROUND, "before": 0, "after": 2, "episodes": 4}
    assert not collapsed({"collapse": found})  # 2 of 4 is not most
    assert collapsed({"collapse": {**found, "after": 3}})
    assert not collapsed({})  # a run recorded before the detector existed


def test_per_episode_averages_both_values_over_queries():
    logits = torch.ones(1, 2, 1, 2, 2)
    logits[0, 0] = -1.0
    frame = record_table([record_rows("maml", "MCF7", "held-out", [0], [[1, 2]], 0, torch.tensor([[0.2, 0.6]]), foreground_fraction(logits))], RUN)
    episode = per_episode(frame)
    assert len(episode) == 1 and episode.iou[0] == pytest.approx(0.4) and episode.predicted_foreground[0] == 0.5


def test_per_image_averages_iou_over_an_images_crops_and_counts_them():
    scores, foreground = torch.tensor([[0.2, 0.6], [0.4, 0.3]]), torch.tensor([[0.5, 1.0], [0.0, 0.25]])
    frame = record_table([record_rows("maml", "MCF7", "held-out", [0, 1], [[7, 8], [7, 7]], 0, scores, foreground)], RUN)
    images = per_image(frame).set_index("image_id")
    assert images.loc[7, "iou"] == pytest.approx(0.3) and list(images.crops) == [3, 1]
    assert "predicted_foreground" not in images  # kept per episode, where the collapse detector reads it


def test_compact_keeps_the_references_rows_once_under_the_seed_protocol():
    scores = torch.tensor([[0.2, 0.6]])
    blocks = [record_rows(name, "MCF7", "held-out", [0], [[1, 2]], 0, scores, scores) for name in ("maml", "otsu", "scratch")]
    seed = record_table(blocks, RUN).assign(protocol="seed")
    both = pd.concat([seed, seed.assign(protocol="tuned", iou=seed.iou.where(seed.reference, 0.9))], ignore_index=True)
    kept = compact(both)
    assert list(zip(kept.method, kept.protocol)) == [("maml", "seed")] * 2 + [("otsu", "seed")] * 2 + [("scratch", "seed")] * 2 + [("maml", "tuned")] * 2
    assert compact(seed).equals(seed) and compact(seed.drop(columns="protocol")).equals(seed.drop(columns="protocol"))


def _printed(*renderables) -> str:
    console = Console(record=True, width=100)
    for r in renderables:
        console.print(r)
    return console.export_text()


def test_run_prints_the_references_beside_the_algorithm_and_warns_of_a_collapse():
    summary = {
        "config": {"algo": "maml", "holdout": "MCF7", "k": 1, "seed": 0, "inner_steps": 2, "device": "cpu"},
        **NUMBERS, "episodes": 3, "collapse": collapse(_episodes([1.0, 1.0, 0.3]).query("not reference")),
        "references": {name: {**NUMBERS, "heldout_iou": 0.35} for name in REFERENCES},
        "wall_s": 1.0, "peak_mem_mb": 10.0, "passes": 9,
    }
    text = _printed(summary_table(summary), facts_table(summary))
    for name in REFERENCES:
        assert f"{name} (ref.)" in text
    assert "0 -> 2 of 3" in text
    warning = collapse_warning(summary)
    assert "maml predicts more than 95% of the query pixels as cell on 2 of 3 held-out episodes" in warning
    assert collapse_warning({**summary, "collapse": {**summary["collapse"], "after": 1}}) is None


def test_run_prints_a_summary_recorded_before_references():
    old = {
        "config": {"algo": "maml", "holdout": "MCF7", "k": 1, "seed": 0, "inner_steps": 2, "device": "cpu"},
        "heldout_iou": 0.5, "heldout_ci": [0.4, 0.6], "heldout_step0_iou": 0.3, "seen_iou": None, "episodes": 3,
        "wall_s": 1.0, "peak_mem_mb": 10.0, "passes": 9,
    }
    text = _printed(summary_table(old), facts_table(old))
    assert "0.500 [0.400, 0.600]" in text and "no references" in text and "(ref.)" not in text
    assert collapse_warning(old) is None
    text = _printed(summary_table({**old, "heldout_ci": [float("nan"), float("nan")]}))
    assert "0.500" in text and "[nan" not in text
