"""The bench instrument on tiny configurations: its bookkeeping (rounds, medians, ratios, variants), that its
numbers are finite and consistent, its higher baseline against our MAML, its memory probe against a known
growth, and the sweep estimate against hand computations. No timing assertions: these machines are noisy."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import algorithms
from benchmark import bench, estimate
from benchmark.cli import main
from benchmark.config import RunConfig, resolve
from benchmark.runner import build, meta_batch
from benchmark.store import Store, write_json
from tasks.catalogue import LINES
from tasks.livecell import open_livecell


def smoke(root, **overrides) -> RunConfig:
    return resolve("smoke", data_root=str(root), **overrides)


# -- bookkeeping -------------------------------------------------------------------------------------------


def test_interleave_runs_every_timer_once_per_round_in_rotating_order():
    calls = []
    timers = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = bench.interleave(timers, repeats=3, warmup=1)
    assert calls == list("abc" "bca" "cab" "abc")
    assert len(times) == 12 and list(times.columns) == ["variant", "round", "warmup", "seconds"]
    assert times[times.warmup]["round"].eq(0).all() and (times.seconds >= 0).all()
    with pytest.raises(ValueError, match="repeats"):
        bench.interleave(timers, repeats=0, warmup=0)


def test_interleave_drops_a_timer_that_runs_out_of_memory():
    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory")

    times = bench.interleave({"a": lambda: None, "big": out_of_memory}, repeats=2, warmup=1)
    assert times.attrs["out_of_memory"] == ["big"]
    assert list(times.variant) == ["a", "a", "a"]  # every round, "big" never again after its first try


def test_medians_skip_warmup_and_ratios_are_taken_round_by_round():
    times = pd.DataFrame(
        [
            {"variant": v, "round": r, "warmup": r == 0, "seconds": s}
            for r, row in enumerate([(100.0, 100.0), (1.0, 3.0), (2.0, 8.0), (4.0, 8.0)])
            for v, s in zip(("B", "step"), row)
        ]
    )
    assert bench.medians(times).to_dict() == {"B": 2.0, "step": 8.0}
    ratios = bench.round_ratios(times, "step", "B", scale=2.0)
    assert ratios.tolist() == [1.5, 2.0, 1.0]  # 3/(2*1), 8/(2*2), 8/(2*4): the warm-up round is left out


@pytest.mark.parametrize("transposed", [False, True])
def test_counting_flops_counts_a_grouped_convolution_as_its_groups_one_by_one(transposed):
    """vmap over T tasks turns per-task weights into a convolution of T groups: the arithmetic of T convolutions."""
    conv = F.conv_transpose2d if transposed else F.conv2d
    groups, channels = 7, 4
    x = torch.randn(3, groups * channels, 8, 8, requires_grad=True)
    w = torch.randn(groups * channels, channels, 3, 3, requires_grad=True)
    _, grouped = bench.counting_flops(lambda: conv(x, w, padding=1, groups=groups).sum().backward())
    pieces = [(xs.detach().requires_grad_(), ws.detach().requires_grad_()) for xs, ws in zip(x.chunk(groups, 1), w.chunk(groups))]
    _, separate = bench.counting_flops(lambda: [conv(xs, ws, padding=1).sum().backward() for xs, ws in pieces])
    assert grouped == separate > 0


@pytest.mark.parametrize("input_gradient", [True, False])
def test_counting_flops_agrees_with_torch_without_groups(input_gradient):
    x = torch.randn(3, 4, 8, 8, requires_grad=input_gradient)
    w = torch.randn(5, 4, 3, 3, requires_grad=True)
    _, ours = bench.counting_flops(lambda: F.conv2d(x, w, stride=2, padding=1).sum().backward())
    with FlopCounterMode(display=False) as theirs:
        F.conv2d(x, w, stride=2, padding=1).sum().backward()
    assert ours == theirs.get_total_flops() > 0


def test_apply_variant_sets_fields_and_options_and_refuses_what_changes_B():
    base = resolve("smoke")
    variant = bench.apply_variant(base, "maml", {"inner_steps": 5, "task_batching": "vmap"})
    assert (variant.algo, variant.inner_steps, variant.task_batching, variant.crop) == ("maml", 5, "vmap", base.crop)
    reptile = bench.apply_variant(base, "reptile", {"epsilon": 0.5})
    assert reptile.options == {"epsilon": 0.5}
    with pytest.raises(ValueError, match="'crop' changes the data or model"):
        bench.apply_variant(base, "maml", {"crop": 48})


# -- what is timed computes the right things -----------------------------------------------------------------


def test_functional_net_is_the_models_function(synthetic_root):
    config = smoke(synthetic_root)
    model = build(config).model
    params = model.init(0)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(bench.FunctionalNet(model.apply, params)(x), model.apply(params, x))


def test_our_maml_meta_gradient_matches_highers(synthetic_root):
    config = smoke(synthetic_root, algo="maml")
    algo = build(config)
    state = algo.init_state(algo.model.init(1))
    batch = meta_batch(config, open_livecell(config.data_root), 0)
    ours = bench.meta_gradient(algo, state, batch)
    theirs, loss = bench.higher_meta_gradient(algo, state.params, batch)
    assert ours.keys() == theirs.keys() and math.isfinite(loss)
    agreement = bench.gradient_agreement(ours, theirs)
    assert agreement["max_abs_grad"] > 0 and agreement["relative"] < 1e-5
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-7)
    # and the first-order meta-gradient is a different vector: the comparison can tell them apart
    first_order = bench.meta_gradient(build(smoke(synthetic_root, algo="fomaml")), state, batch)
    assert bench.gradient_agreement(ours, first_order)["relative"] > 1e-3


def test_meta_gradient_refuses_algorithms_without_one(synthetic_root):
    data = open_livecell(str(synthetic_root))
    for config in (smoke(synthetic_root, algo="finetune"),):  # (reptile's epsilon is plain SGD's step: it has one)
        algo = build(config)
        with pytest.raises(ValueError, match="does not step an outer optimiser"):
            bench.meta_gradient(algo, algo.init_state(algo.model.init(0)), meta_batch(config, data, 0))


def test_adapt_and_score_batched_equals_one_by_one(synthetic_root):
    config = smoke(synthetic_root, algo="fomaml")
    algo = build(config)
    state = algo.init_state(algo.model.init(0))
    episodes = bench.evaluation_batch(config, open_livecell(config.data_root), 3)
    scores = bench.adapt_and_score(algo, state, episodes)
    assert scores.shape == (config.inner_steps + 1, 3, config.eval_queries)
    assert scores.min() >= 0 and scores.max() <= 1
    singles = torch.cat([bench.adapt_and_score(algo, state, one) for one in bench.one_by_one(episodes)], dim=1)
    torch.testing.assert_close(scores, singles, atol=0.01, rtol=0)


def test_measure_returns_finite_consistent_numbers(synthetic_root):
    variants = {name: smoke(synthetic_root, algo=name) for name in ("maml", "fomaml", "reptile", "finetune")}
    variants["fomaml"] = dataclasses.replace(variants["fomaml"], task_batching="vmap")
    result = bench.measure(variants, repeats=2, warmup=0, compare_higher=True, memory=False)
    assert result["settings"]["repeats"] == 2 and result["settings"]["memory_method"] is None
    base = result["baseline"]
    assert base["seconds"] > 0 and base["images"] == 2 * 3  # smoke: 2 tasks x k=3
    assert base["task_by_task_seconds"] > 0 and base["task_by_task_ratio"] > 0
    rows = {row["variant"]: row for row in result["meta_steps"]}
    assert set(rows) == {"maml", "fomaml", "reptile", "finetune", "maml (higher)"}
    for row in rows.values():
        assert row["seconds"] > 0 and 0 < row["ratio_min"] <= row["ratio_to_n1B"] <= row["ratio_max"] < math.inf
        assert row["inner_steps"] == 2 and row["peak_mem_mb"] is None
    assert rows["maml"]["task_batching"] == "loop" and rows["fomaml"]["task_batching"] == "vmap"
    assert rows["reptile"]["task_batching"] == "loop" and rows["finetune"]["task_batching"] == "pooled"
    assert rows["reptile"]["passes"] == 2 and rows["fomaml"]["passes"] == 3
    # the arithmetic: smoke has n=2 inner steps on k=3 support images and q=2 query images per task (fomaml's
    # tasks vmapped: grouped convolutions, counted as the loop's)
    assert rows["fomaml"]["flops_to_n1B"] == pytest.approx((2 * 3 + 2) / ((2 + 1) * 3))
    assert rows["reptile"]["flops_to_n1B"] == pytest.approx(2 / (2 + 1))  # n passes of k images, no query pass
    assert rows["maml (higher)"]["flops_to_n1B"] == pytest.approx(rows["maml"]["flops_to_n1B"])
    assert rows["maml"]["flops_to_n1B"] > 2 * rows["fomaml"]["flops_to_n1B"]  # second derivatives
    assert base["flops"] > 0
    ev = result["evaluation"]
    assert ev["episodes"] == 4 and ev["batched_eps_per_s"] > 0 and ev["one_by_one_eps_per_s"] > 0 and ev["max_iou_diff"] <= 0.01
    data = result["data"]
    assert data["fastest_variant"] in rows
    assert data["headroom"] == pytest.approx(data["batches_per_s"] / data["meta_steps_per_s"])
    assert result["higher"]["rounds"] == 2 and result["higher"]["gradient"]["relative"] < 1e-5
    timed = pd.DataFrame(result["times"])
    assert len(timed) == 2 * (2 + 5 + 3)  # B two ways, 5 meta-steps, sampling and two evaluations, in each round
    json.dumps(result)  # plain data, for --json
    with pytest.raises(ValueError, match="include maml"):
        bench.measure({"fomaml": variants["fomaml"]}, repeats=1, warmup=0, compare_higher=True, memory=False)


def test_bench_reports_each_variants_collapse_detector_before_and_after_adapting(synthetic_root):
    from rich.console import Console

    from benchmark.commands.bench import tables
    from benchmark.evaluation import scored_steps

    config = smoke(synthetic_root, algo="fomaml")
    variants = {"fomaml": config, "maml:init_foreground=0.999999": bench.apply_variant(config, "maml", {"init_foreground": 0.999999})}
    result = bench.measure(variants, repeats=1, warmup=0, memory=False)
    plain, all_cell = result["collapse"]["fomaml"], result["collapse"]["maml:init_foreground=0.999999"]
    algo = build(config)
    episodes = bench.evaluation_batch(config, open_livecell(config.data_root), config.eval_batch)
    _, logits, _ = next(scored_steps(algo, algo.init_state(algo.model.init(config.seed)), episodes))  # step 0
    before = (logits > 0).double().mean()
    assert plain["foreground_before"] == pytest.approx(float(before)) and 0 <= plain["foreground_after"] <= 1
    assert plain["threshold"] == 0.95 and plain["episodes"] == all_cell["episodes"] == config.eval_batch
    assert all_cell["foreground_before"] > 0.95 and all_cell["before"] == config.eval_batch  # an output bias of logit 13.8
    console = Console(width=200, record=True)
    for table in tables(result | {"settings": result["settings"] | {"preset": "smoke"}}):  # as the command sets it
        console.print(table)
    assert f"{all_cell['before']} -> {all_cell['after']} of {config.eval_batch}" in console.export_text()


def test_a_variant_that_runs_out_of_memory_is_reported_not_timed(synthetic_root, monkeypatch):
    """On a GPU, vmap over many second-order tasks can need more than the card has (the paper preset's MAML over
    5 tasks did on a 139 GiB H200): that variant's row says so, the others are timed as usual."""
    from algorithms.maml import MAML

    def out_of_memory(self, state, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 702.00 MiB")

    monkeypatch.setattr(MAML, "meta_step", out_of_memory)
    variants = {name: smoke(synthetic_root, algo=name) for name in ("maml", "fomaml")}
    result = bench.measure(variants, repeats=1, warmup=0, memory=False)
    rows = {row["variant"]: row for row in result["meta_steps"]}
    assert rows["maml"]["error"] == "out of memory" and rows["maml"]["seconds"] is None
    assert rows["fomaml"]["error"] is None and rows["fomaml"]["seconds"] > 0
    assert "maml" not in set(pd.DataFrame(result["times"]).variant)
    assert [config.algo for config, *_ in bench.costs(result, variants)] == ["fomaml"]
    with pytest.raises(ValueError, match="every variant ran out of memory on cpu: maml"):
        bench.measure({"maml": variants["maml"]}, repeats=1, warmup=0, memory=False)


@pytest.mark.slow
def test_meta_step_memory_grows_with_second_order_inner_steps(synthetic_root):
    """The probe sees what second-order MAML keeps: each inner step's activations (a fresh process per value)."""
    short, long = (smoke(synthetic_root, algo="maml", crop=64, width=8, inner_steps=n) for n in (1, 8))
    small, large = bench.meta_step_memory([(short, False), (long, False)])
    assert 0 < small < large and large - small > 20  # MB; 7 more steps of 64x64 activations, 2 tasks x 3 images


def test_meta_step_memory_warms_up_batch_statistics_models_at_full_depth(synthetic_root):
    """The warm-up step's image keeps two pixels per side at the deepest level: batch-statistics normalisation
    fails on one value per channel (the paper preset's VGG-11 U-Net, depth 5, failed so on a 32-pixel warm-up)."""
    config = smoke(synthetic_root, algo="fomaml", crop=64, depth=5, width=2, norm="batch", inner_steps=1)
    assert bench.memory._meta_step_memory_here(config, via_higher=False, threads=1) > 0


# -- the sweep estimate ------------------------------------------------------------------------------------


def test_cost_key_ignores_only_holdout_seed_and_preset():
    base = resolve("default")
    same = dataclasses.replace(base, holdout="A172", seed=4, preset="smoke")
    assert estimate.cost_key(same) == estimate.cost_key(base)
    assert estimate.cost_key(base) == estimate.cost_key(json.loads(json.dumps(base.to_dict())))  # as a summary holds it
    assert estimate.cost_key(resolve("default", k=1)) != estimate.cost_key(base)


def test_run_seconds_is_meta_steps_times_step_plus_every_adapted_episode_times_episode():
    config = resolve("default", meta_steps=150, eval_episodes=40, seen_episodes=10)  # 16 validation episodes, 6 rates
    assert estimate.evaluation_episodes(config) == 40 + 7 * 10  # the held-out line's, then 10 on each of 7 lines
    assert estimate.budget_points(config) == 7  # steps 0, 25, ..., 150
    assert estimate.budget_points(dataclasses.replace(config, meta_steps=110)) == 6  # 0, 25, 50, 75, 100 and the last
    # validation: 16 x (7 budget points + 6 rates); evaluation: 110 x (seed + tuned protocol + references)
    cost = estimate.Cost(step_s=2.0, episode_s=0.5)
    assert estimate.run_seconds(config, cost) == pytest.approx(150 * 2.0 + (16 * 13 + 110 * 3) * 0.5)
    assert estimate.run_seconds(config, cost, reference_episodes=0) == pytest.approx(150 * 2.0 + (16 * 13 + 110 * 2) * 0.5)
    learned = estimate.Cost(step_s=2.0, episode_s=0.5, selects_rate=False)  # no rate to select: one protocol
    assert estimate.run_seconds(config, learned) == pytest.approx(150 * 2.0 + (16 * 7 + 110 * 2) * 0.5)
    assert estimate.adapted_episodes(resolve("default", adapt_rates=(), budget_every=0), reference_episodes=0) == 40 + 7 * 4


def test_a_sweep_computes_each_batch_of_references_once():
    """The references of a batch of episodes are cached: a seen line's batch is the same whichever line is held out
    and whichever algorithm runs, so a sweep over 8 held-out lines at one k and seed adapts 8 x 40 + 8 x 4."""
    configs = [resolve("default", algo=algo, holdout=line.name) for line in LINES for algo in ("reptile", "fomaml")]
    batches = {batch for config in configs for batch in estimate.reference_batches(config)}
    assert sum(batch[-1] for batch in batches) == 8 * 40 + 8 * 4
    assert not set(estimate.reference_batches(configs[0])) & set(estimate.reference_batches(dataclasses.replace(configs[0], seed=1)))
    assert set(estimate.reference_batches(configs[0])) == set(estimate.reference_batches(dataclasses.replace(configs[0], meta_steps=1000)))
    known = estimate.known_costs([(resolve("smoke", algo=name), 1.0, 1.0) for name in ("reptile", "meta-sgd")])
    assert [cost.selects_rate for cost in known.values()] == [True, False]  # meta-sgd learns its rates


def test_estimate_prefers_finished_runs_then_known_costs_then_calibrates(synthetic_root, tmp_path, monkeypatch):
    store = Store(tmp_path)
    finished = smoke(synthetic_root, algo="fomaml", holdout="A172")
    for i, (wall, status) in enumerate([(10.0, "completed"), (30.0, "completed"), (20.0, "completed"), (999.0, "failed")]):
        folder = store.runs / f"run{i}"
        folder.mkdir(parents=True)
        write_json(folder / "summary.json", {"run_id": f"run{i}", "status": status, "config": finished.to_dict(), "wall_s": wall})
    from_store = smoke(synthetic_root, algo="fomaml", holdout="BV2")  # same settings, another line: same cost
    known = smoke(synthetic_root, algo="reptile")
    calibrated = smoke(synthetic_root, algo="maml")
    told = []
    table = estimate.estimate_table(
        [from_store, known, calibrated, smoke(synthetic_root, algo="maml", holdout="Huh7")],
        store,
        known=estimate.known_costs([(known, 0.1, 0.01)]),
        on_calibrate=lambda c: told.append(c.algo),
    )
    assert table.source.tolist() == ["store", "measured", "calibrated", "calibrated"]
    assert told == ["maml"]  # one calibration per cost class
    assert table.seconds.iloc[0] == 20.0  # median of the finished runs' wall times; the failed one is ignored
    # smoke: 3 meta-steps; 2 validation episodes at 3 budget points and for 2 rates; 11 evaluation episodes under
    # two protocols, and the references of batches no earlier run needed: after BV-2 held out, MCF7's 4 held-out
    # episodes and BV-2's 1 as a seen line (and none for maml after reptile)
    assert table.seconds.iloc[1] == pytest.approx(3 * 0.1 + (2 * (3 + 2) + 11 * 2 + 5) * 0.01)
    assert 0 < table.seconds.iloc[2] < table.seconds.iloc[3] and math.isfinite(table.seconds.iloc[3])  # Huh7: new references
    monkeypatch.setattr(estimate, "calibrate", lambda config: estimate.Cost(1.0, 1.0))
    assert estimate.estimate_sweep([known, calibrated], store) == pytest.approx((3 + 10 + 11 * 3) + (3 + 10 + 11 * 2))  # one references
    # held out Huh7 after MCF7: new references for Huh7's 4 held-out episodes and MCF7's 1, now a seen line
    huh7 = smoke(synthetic_root, algo="maml", holdout="Huh7")
    assert estimate.estimate_table([calibrated, huh7]).seconds.tolist() == pytest.approx([3 + 10 + 11 * 3, 3 + 10 + 11 * 2 + 5])


def test_format_duration():
    assert [estimate.format_duration(s) for s in (8.04, 750, 7500)] == ["8.0 s", "12 min 30 s", "2 h 05 min"]


# -- the command -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_command_prints_json_with_the_sweep_estimate(synthetic_root, capsys, monkeypatch):
    calibrated = []
    monkeypatch.setattr(estimate, "calibrate", lambda config: calibrated.append(config) or estimate.Cost(1.0, 1.0))
    args = ["bench", "--preset", "smoke", "--data-root", str(synthetic_root), "--repeats", "1", "--warmup", "0"]
    assert main(args + ["--algos", "fomaml", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["variant"] for row in result["meta_steps"]] == ["fomaml"]
    assert result["meta_steps"][0]["peak_mem_mb"] > 0 and "RSS" in result["settings"]["memory_method"]
    assert result["sweep"]["runs"] == len(algorithms.available()) * 8 * 2 and result["sweep"]["seconds"] > 0
    sources = {(row["algo"], row["k"]): row["source"] for row in result["sweep"]["per_run"]}
    assert sources[("fomaml", 3)] == "measured"  # timed above
    assert sources[("reptile", 3)] == sources[("fomaml", 1)] == "calibrated"
    assert len(calibrated) == len(algorithms.available()) * 2 - 1  # once per algorithm and k, except the one just measured


def test_bench_command_variants_resolve_per_algorithm(capsys, tmp_path):
    settings = tmp_path / "settings.toml"
    settings.write_text("[algorithms.reptile]\nepsilon = 0.5\n")
    args = ["bench", "--preset", "smoke", "--config", str(settings), "--algos", "reptile,maml:inner_steps=5:task_batching=vmap", "--print-config"]
    assert main(args) == 0
    out = capsys.readouterr().out
    configs = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00")]
    assert [c["variant"] for c in configs] == ["reptile", "maml:inner_steps=5:task_batching=vmap"]
    assert configs[0]["algo_options"] == {"epsilon": 0.5} and configs[1]["algo_options"] == {}  # per algorithm
    assert (configs[1]["algo"], configs[1]["inner_steps"], configs[1]["task_batching"]) == ("maml", 5, "vmap")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--algos", "nope"], "unknown algorithm 'nope'"),
        (["--algos", "maml:crop=48"], "'crop' changes the data or model"),
        (["--algos", "maml:inner_steps"], "expected KEY=VALUE"),
        (["--algos", "fomaml,fomaml"], "names a variant twice"),
        (["--algos", "fomaml", "--compare-higher"], "include maml"),
    ],
)
def test_bench_command_bad_requests_are_one_line_errors(capsys, extra, message):
    assert main(["bench", "--preset", "smoke", "--repeats", "1", *extra]) == 2  # refused before any data is read
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
