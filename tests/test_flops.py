"""The FLOPs of a run's meta-training: counted once per configuration and multiplied out (``bench.flops``), recorded
per run, computed by the report for runs recorded without them, and the report's comparison at equal FLOPs."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

import algorithms
from benchmark.bench.flops import counting_flops, flop_schedule
from benchmark.config import resolve
from benchmark.report import budget
from benchmark.runner import RunResult, build
from tasks.batch import TaskBatch


def smoke(algo: str, **overrides):
    return resolve("smoke", algo=algo, **overrides)


def counted_step(config, step: int = 0) -> int:
    """One meta-step of ``config``, counted on a whole meta-batch of random images at meta-step ``step``."""
    algo = build(config)
    state = dataclasses.replace(algo.init_state(algo.model.init(config.seed)), step=step)
    generator = torch.Generator().manual_seed(1)
    images = lambda n: torch.rand(config.meta_batch, n, 1, config.crop, config.crop, generator=generator)  # noqa: E731
    batch = TaskBatch(images(config.k), images(config.k).round(), images(config.query_size), images(config.query_size).round())
    return counting_flops(lambda: algo.meta_step(state, batch))[1]


@pytest.mark.parametrize("algo", algorithms.available())
def test_a_runs_flops_are_one_meta_steps_times_the_meta_steps(algo):
    config = smoke(algo)
    per_step = counted_step(config)
    assert flop_schedule(config) == ((0, config.meta_steps, per_step),)
    assert RunResult(config, pd.DataFrame(), [], {}, None, None, flops=flop_schedule(config)).train_flops == 3 * per_step > 0


def test_second_order_maml_costs_more_flops_per_meta_step_than_first_order():
    (_, _, second), (_, _, first) = flop_schedule(smoke("maml"))[0], flop_schedule(smoke("fomaml"))[0]
    assert second > 2 * first  # its inner steps are differentiated twice


def test_the_schedule_follows_maml_plus_plus_switches_step_by_step():
    config = smoke("maml++", meta_steps=7, algo_options=(("first_order_steps", 4), ("multi_step_loss_steps", 2)))
    by_step = [counted_step(config, step) for step in range(7)]
    assert len(set(by_step)) == 3  # multi-step loss (0, 1), first order (2, 3), second order (4..6)
    pieces = flop_schedule(config)
    assert [flops for first, end, flops in pieces for _ in range(first, end)] == by_step


def test_the_schedule_is_counted_once_per_configuration_whatever_the_line_and_seed(monkeypatch):
    config = smoke("fomaml", meta_steps=5)
    flop_schedule(config)
    monkeypatch.setattr("benchmark.bench.flops._count_schedule", lambda *_: pytest.fail("counted again"))
    assert flop_schedule(dataclasses.replace(config, holdout="BV-2", seed=3)) == flop_schedule(config)



def test_another_process_reads_the_schedule_from_the_cache_folder(monkeypatch, tmp_path):
    """Each run of a sweep is its own process: the schedule counted by the first is read back by the others."""
    from benchmark.bench import flops

    monkeypatch.setenv("FEWSHOT_CELLSEG_CACHE", str(tmp_path))  # its made-up schedule stays out of the session's cache
    monkeypatch.setattr(flops, "_SCHEDULES", {})
    config = smoke("reptile", meta_steps=4)
    counted = flop_schedule(config)
    assert len(list((tmp_path / "flops").glob("*.json"))) == 1
    monkeypatch.setattr(flops, "_SCHEDULES", {})  # a fresh process
    monkeypatch.setattr(flops, "_count_schedule", lambda *_: pytest.fail("counted again"))
    assert flop_schedule(dataclasses.replace(config, holdout="A172")) == counted
    monkeypatch.setattr(flops, "_SCHEDULES", {})
    monkeypatch.setattr(flops, "_count_schedule", lambda *_: [(0, 5, 7)])
    assert flop_schedule(dataclasses.replace(config, meta_steps=5)) == ((0, 5, 7),)  # another configuration, counted

def write_run(folder, config, val_iou_n, summary_extra=None):
    """A run folder as the store leaves it: summary.json and a train_log.csv with budget points every 2 steps."""
    folder.mkdir(parents=True)
    steps = range(config.meta_steps + 1)
    pd.DataFrame({
        "step": list(steps), "loss": [None] + [1.0] * config.meta_steps, "passes": [0] + [3] * config.meta_steps,
        "wall_s": list(steps), "val_iou_0": [0.1 if s % 2 == 0 else None for s in steps],
        "val_iou_n": [val_iou_n(s) if s % 2 == 0 else None for s in steps],
    }).to_csv(folder / "train_log.csv", index=False)
    summary = {"status": "completed", "config": config.to_dict()} | (summary_extra or {})
    (folder / "summary.json").write_text(json.dumps(summary))
    return {"algo": config.algo, "holdout": config.holdout, "k": config.k, "seed": config.seed, "folder": folder}


def test_the_report_counts_the_flops_of_a_run_recorded_without_them(tmp_path):
    config = smoke("fomaml", meta_steps=4)
    (_, _, per_step), = flop_schedule(config)
    recorded = write_run(tmp_path / "recorded", config, lambda s: 0.5, {"flops_per_step": [[0, 4, 7]]})
    older = write_run(tmp_path / "older", dataclasses.replace(config, algo="reptile"), lambda s: 0.5)
    reptile = flop_schedule(dataclasses.replace(config, algo="reptile"))[0][2]
    points = budget.budget_points(pd.DataFrame([recorded, older]))
    assert list(points[points.algo == "fomaml"].flops) == [0, 14, 28]  # as recorded
    assert list(points[points.algo == "reptile"].flops) == [0, 2 * reptile, 4 * reptile]  # counted from its config
    assert per_step != reptile


def test_flops_through_a_budget_point_add_up_the_pieces_before_it():
    pieces = [[0, 3, 10], [3, 5, 100]]
    assert [budget.flops_through(pieces, step) for step in (0, 1, 3, 4, 5, 9)] == [0, 10, 30, 130, 230, 230]


def test_the_ranking_at_equal_flops_takes_each_algorithms_last_point_within_the_least_total():
    rows = []
    for algo, per_step, ious in (("maml", 30, [0.1, 0.9, 0.95]), ("reptile", 10, [0.1, 0.3, 0.5]), ("fomaml", 12, [0.1, 0.4, 0.2])):
        for step, iou in zip((0, 2, 4), ious):
            rows.append({"algo": algo, "holdout": "MCF7", "k": 1, "seed": 0, "step": step, "passes": 0,
                         "flops": per_step * step, "val_iou_0": 0.1, "val_iou_n": iou})
    rows.append({**rows[-1], "holdout": "BV-2"})  # a cell of one algorithm is not compared
    equal = budget.at_equal_flops(pd.DataFrame(rows))
    # the least total is reptile's 40: maml reached 0 and 60 (step 0 within), fomaml 24 (step 2) and 48
    assert list(equal.algo) == ["reptile", "fomaml", "maml"]
    assert list(equal.step) == [4, 2, 0] and set(equal.budget_flops) == {40} and list(equal["rank"]) == [1, 2, 3]
    (said,) = budget.ranking_at_equal_flops(equal)
    assert said == "MCF7, k = 1, seed 0, at 4e-11 TFLOP: reptile (step 4) > fomaml (step 2) > maml (step 0)"
