"""Compute: B (the U-Net's forward-backward over one meta-batch's support images) and each algorithm's meta-step,
at the default preset."""

from __future__ import annotations

import dataclasses

import pytest

import algorithms
from benchmark.bench.workload import baseline_pass
from benchmark.runner import build, meta_batch


@pytest.mark.benchmark(group="compute (default preset)")
def test_unet_forward_backward(benchmark, default_config, default_data):
    algo = build(default_config)
    batch = meta_batch(default_config, default_data, 0)
    benchmark.pedantic(baseline_pass(algo, algo.model.init(0), batch), rounds=10, warmup_rounds=1)


@pytest.mark.benchmark(group="compute (default preset)")
@pytest.mark.parametrize("algo_name", algorithms.available())
def test_meta_step(benchmark, default_config, default_data, algo_name):
    config = dataclasses.replace(default_config, algo=algo_name)
    algo = build(config)
    state = algo.init_state(algo.model.init(0))
    batch = meta_batch(config, default_data, 0)
    _, metrics = benchmark.pedantic(algo.meta_step, args=(state, batch), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(passes=metrics["passes"], inner_steps=config.inner_steps, tasks=batch.tasks)
