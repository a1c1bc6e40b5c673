"""The measurements behind ``python -m benchmark bench``: what a meta-step costs, against what it should cost.

The unit is B: one ordinary forward-backward pass over the support images of one meta-batch (T tasks x k
images as one batch). A meta-step with n inner steps does about n + 1 such passes, so its time over
(n + 1) * B says how close an algorithm runs to the cost of the arithmetic it must do.

These machines are noisy (the same code drifts by ~45% between processes), so every timing here comes from
:func:`interleave`: all variants run once per round, in a rotating order, in one process, and a variant is
summarised by its median over the rounds after warm-up. Ratios are taken round by round (each variant against
the B of its own round) before the median, so drift between rounds cancels.

Each meta-step's arithmetic is counted too (:func:`counting_flops`): its convolution and matrix-product FLOPs over
(n + 1) times B's are the ratio the meta-step would reach if every kernel ran as fast per FLOP as B's do, so a
time ratio far above it is overhead, and one near it is the arithmetic itself.

Peak memory is measured in a fresh process per variant (see :func:`meta_step_memory`): on CPU as the growth of
the resident set size (RSS) during one meta-step, since ``tracemalloc`` does not see torch's allocator; on a GPU
as the growth of ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.ops import aten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from algorithms import Algorithm, MetaState
from benchmark.config import FIELDS, RunConfig
from benchmark.runner import build, device_of, evaluation_episodes, meta_batch, scored_steps
from tasks.batch import TaskBatch
from tasks.episodes import stack_episodes
from tasks.livecell import LiveCell, open_livecell

Params = dict[str, Tensor]

VARIANT_FIELDS = ("inner_steps", "inner_lr", "outer_optimizer", "outer_lr", "task_batching")
"""RunConfig fields a bench variant may change: they change the meta-step, not the data or model B is measured on."""

SAMPLER_WARMUP_STEPS = 25  # meta-batches sampled before sampling is timed

MEMORY_METHODS = {
    "cpu": "RSS growth during one meta-step, fresh process",
    "cuda": "torch.cuda.max_memory_allocated growth during one meta-step, fresh process",
}


# -- timing ------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it (CPU work is synchronous already)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    timers: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device | str = "cpu",
    on_round: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Time every timer once per round, ``warmup + repeats`` rounds, in one process.

    Round r starts at timer ``r mod len(timers)`` (a rotation), so no variant always runs first or right after
    the same neighbour. Returns one row per (variant, round): ``variant, round, warmup, seconds``. A timer that
    runs out of memory (on a GPU, vmap over many second-order tasks can need more than the card has) is dropped
    from the rounds and named in the result's ``attrs["out_of_memory"]``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not timers:
        raise ValueError("nothing to time: no timers given")
    device = torch.device(device)
    names, out_of_memory = list(timers), []
    rows = []
    for r in range(warmup + repeats):
        if not names:
            break
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            started = time.perf_counter()
            try:
                timers[name]()
            except torch.OutOfMemoryError:
                out_of_memory.append(name)
                names.remove(name)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            synchronize(device)
            rows.append({"variant": name, "round": r, "warmup": r < warmup, "seconds": time.perf_counter() - started})
        if on_round:
            on_round(r)
    times = pd.DataFrame(rows, columns=["variant", "round", "warmup", "seconds"])
    times.attrs["out_of_memory"] = out_of_memory
    return times


def medians(times: pd.DataFrame) -> pd.Series:
    """Median seconds per variant over the rounds after warm-up."""
    return times[~times.warmup].groupby("variant", sort=False).seconds.median()


def round_ratios(times: pd.DataFrame, variant: str, reference: str, scale: float = 1.0) -> pd.Series:
    """``seconds(variant) / (scale * seconds(reference))`` in each round after warm-up, indexed by round."""
    timed = times[~times.warmup].pivot(index="round", columns="variant", values="seconds")
    return timed[variant] / (scale * timed[reference])


# -- what is timed -----------------------------------------------------------------------------------------


def apply_variant(config: RunConfig, algo: str, overrides: dict[str, Any]) -> RunConfig:
    """``config`` for algorithm ``algo`` with a variant's settings: RunConfig fields among
    :data:`VARIANT_FIELDS`, anything else an algorithm-specific option. Settings that would change the data or
    the model (and so B) are refused: they belong on the command line, for every variant at once."""
    fields, options = {}, dict(config.options)
    for key, value in overrides.items():
        if key in VARIANT_FIELDS:
            fields[key] = value
        elif key in FIELDS:
            raise ValueError(
                f"variant {algo}: {key!r} changes the data or model that B is measured on; "
                f"set it for all variants with --{key.replace('_', '-')}"
            )
        else:
            options[key] = value
    return dataclasses.replace(config, algo=algo, algo_options=tuple(sorted(options.items())), **fields)


def convolution_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                               _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward pass: the input gradient and the weight gradient each cost what the forward
    convolution does. (torch 2.14's formula ignores ``groups``: it counts the backward pass of a convolution of g
    groups as if each group saw all channels, and vmap over tasks turns per-task weights into such groups.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (bool(output_mask[0]) + bool(output_mask[1]))


def counting_flops(run: Callable[[], Any]) -> tuple[Any, int]:
    """``(run(), FLOPs it performed)``: convolutions and matrix products as ``torch.utils.flop_counter`` counts
    them (elementwise work, normalisation and pooling are not counted), grouped convolutions counted right."""
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: convolution_backward_flops}) as counter:
        result = run()
    return result, counter.get_total_flops()


def baseline_pass(algo: Algorithm, params: Params, batch: TaskBatch, task_by_task: bool = False) -> Callable[[], None]:
    """B: one ordinary forward-backward pass over the support images of ``batch`` (T x k images as one batch).

    ``task_by_task``: the same images as T passes of k images, one per task: the least a meta-step that runs
    each task on its own weights pays per pass (the floor of a looped first-order meta-step over (n+1)B)."""
    leaves = [p.detach().requires_grad_(True) for p in params.values()]
    named = dict(zip(params, leaves))
    sets = list(zip(batch.support_x, batch.support_y)) if task_by_task else [(batch.support_x.flatten(0, 1), batch.support_y.flatten(0, 1))]

    def run() -> None:
        for images, masks in sets:
            torch.autograd.grad(algo.loss_on(named, images, masks), leaves)

    return run


class FunctionalNet(nn.Module):
    """A functional model as an ``nn.Module`` that holds its parameters: the form ``higher`` patches.

    Parameters are registered as ``p0, p1, ...`` (module attribute names cannot contain dots) and handed
    back to the pure ``apply`` under their own names, so the network is the same function as the model's.
    """

    def __init__(self, apply: Callable[[Params, Tensor], Tensor], params: Params):
        super().__init__()
        self.functional = apply
        self.names = list(params)
        for i, value in enumerate(params.values()):
            self.register_parameter(f"p{i}", nn.Parameter(value.detach().clone()))

    def forward(self, x: Tensor) -> Tensor:
        return self.functional({name: self._parameters[f"p{i}"] for i, name in enumerate(self.names)}, x)


def higher_meta_gradient(algo: Algorithm, params: Params, batch: TaskBatch) -> tuple[Params, float]:
    """Second-order MAML's meta-gradient and mean query loss, computed with ``higher.innerloop_ctx``.

    The textbook ``higher`` loop: per task, n differentiable SGD steps at ``algo.inner_lr`` on the support
    loss, then the query loss divided by T, back-propagated into the shared initial weights.
    """
    import higher  # the benchmark extra; only --compare-higher needs it

    net = FunctionalNet(algo.model.apply, params)
    inner = torch.optim.SGD(net.parameters(), lr=algo.inner_lr)
    tasks, total = batch.tasks, 0.0
    for t in range(tasks):
        with higher.innerloop_ctx(net, inner, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(algo.inner_steps):
                diffopt.step(algo.loss_fn(fnet(batch.support_x[t]), batch.support_y[t]))
            loss = algo.loss_fn(fnet(batch.query_x[t]), batch.query_y[t]) / tasks
            loss.backward()
            total += float(loss.detach())
    return {name: p.grad for name, p in zip(net.names, net.parameters())}, total


def higher_meta_step(algo: Algorithm, state: MetaState, batch: TaskBatch) -> MetaState:
    """One second-order MAML meta-step through ``higher``, with the same outer update as ``algo``."""
    grads, _ = higher_meta_gradient(algo, state.params, batch)
    return algo.outer_update(state, grads)


def meta_gradient(algo: Algorithm, state: MetaState, batch: TaskBatch) -> Params:
    """The gradient ``algo.meta_step`` hands its outer optimiser (captured; the update itself is skipped)."""
    captured: Params = {}
    probe = copy.copy(algo)

    def capture(state: MetaState, grad_params: Params, grad_extra: Params | None = None) -> MetaState:
        captured.update(grad_params)
        return state

    probe.outer_update = capture
    probe.meta_step(state, batch)
    if not captured:
        raise ValueError(f"{algo.name}: its meta-step does not step an outer optimiser along a meta-gradient")
    return captured


def gradient_agreement(ours: Params, theirs: Params) -> dict[str, Any]:
    """How far two gradients are apart: max |difference|, max |gradient|, and whether they are bitwise equal."""
    diff = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    scale = max(float(g.abs().max()) for g in ours.values())
    return {
        "max_abs_diff": diff,
        "max_abs_grad": scale,
        "relative": diff / scale if scale else 0.0,
        "bitwise_equal": all(torch.equal(ours[k], theirs[k]) for k in ours),
    }


def evaluation_batch(config: RunConfig, data: LiveCell, count: int) -> TaskBatch:
    """The first ``count`` evaluation episodes of the held-out line, as ``run`` samples them."""
    return stack_episodes(evaluation_episodes(config, data, config.holdout, range(count)))


def adapt_and_score(algo: Algorithm, state: MetaState, batch: TaskBatch) -> Tensor:
    """What evaluation computes for a batch of E episodes (``runner.scored_steps``): IoU [n + 1, E, q]."""
    return torch.stack([scores for _, _, scores in scored_steps(algo, state, batch)])


def one_by_one(batch: TaskBatch) -> list[TaskBatch]:
    """Each task of ``batch`` as a batch of one."""
    return [TaskBatch(*(t[e : e + 1] for t in batch)) for e in range(batch.tasks)]


# -- memory ------------------------------------------------------------------------------------------------


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _meta_step_memory_here(config: RunConfig, via_higher: bool, threads: int) -> float:
    """Runs in a fresh process: MB that one meta-step adds to the peak (see :func:`meta_step_memory`)."""
    torch.set_num_threads(threads)
    device = device_of(config)
    data = open_livecell(config.data_root)
    algo = build(config)
    state = algo.init_state(algo.model.init(config.seed))
    state = MetaState({k: v.to(device) for k, v in state.params.items()}, state.extra, state.optimizer, state.step)
    batch = meta_batch(config, data, 0).to(device)

    def step(batch: TaskBatch) -> None:
        higher_meta_step(algo, state, batch) if via_higher else algo.meta_step(state, batch)

    # one step on a single small image first: lazy imports, kernels and thread pools are not the step's memory;
    # its side leaves 2x2 pixels at the deepest level, so batch-statistics normalisation has values to normalise
    side = 2 ** (config.depth + 1)
    step(TaskBatch(*(t[:1, :1, :, :side, :side] for t in batch)))
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(batch)
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = _rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # Linux: reset the peak RSS (VmHWM) to the current RSS
        fh.write("5")
    step(batch)
    return _rss_mb("VmHWM") - before


def meta_step_memory(configs: list[tuple[RunConfig, bool]]) -> list[float]:
    """Peak extra memory (MB) of one meta-step of each ``(configuration, via_higher)``: the configuration's
    algorithm, or second-order MAML through ``higher`` where ``via_higher``.

    Each is measured in a fresh process (so one variant's freed-but-cached memory cannot hide the next one's),
    one after another (two probes of vmapped second-order variants at a time, at 7-8 GB each beside the timing
    process's cached memory, filled a 24 GB machine until it thrashed), after the data, model and batch are in
    memory and one warm-up step on a small image: on CPU, the peak RSS (``VmHWM``, reset just before) minus the
    RSS before the step; on a GPU, the peak of ``torch.cuda.max_memory_allocated`` minus what was allocated before.
    """
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        threads = torch.get_num_threads()
        return [pool.submit(_meta_step_memory_here, config, via_higher, threads).result() for config, via_higher in configs]


# -- the whole bench ---------------------------------------------------------------------------------------


ROW_FIELDS = ("variant", "algo", "inner_steps", "task_batching", "passes", "seconds", "ratio_to_n1B", "ratio_min",
              "ratio_max", "flops_to_n1B", "peak_mem_mb", "error")
"""The columns of a :func:`measure` result's ``meta_steps`` rows."""


def measure(
    variants: dict[str, RunConfig],
    repeats: int = 5,
    warmup: int = 1,
    compare_higher: bool = False,
    memory: bool = True,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Time B, each variant's meta-step, evaluation (batched and one by one) and data sampling, interleaved.

    ``variants``: label -> configuration; they must share everything B depends on (data and model settings;
    see :func:`apply_variant`). The first variant's configuration sets the data, batch and evaluation episodes.
    With ``compare_higher``, second-order MAML through ``higher`` runs in the same rounds (label
    ``maml (higher)``) and its meta-gradient is checked against the first ``maml`` variant's.

    Returns plain data (JSON-ready): ``settings``, ``baseline`` (B), ``meta_steps`` (one row per variant),
    ``evaluation``, ``data``, ``higher`` (or None), ``times`` (every timed call, one row each).
    """
    if not variants:
        raise ValueError("no variants to measure")
    first = next(iter(variants.values()))
    device = device_of(first)
    data = open_livecell(first.data_root)
    algos = {label: build(config) for label, config in variants.items()}
    model = next(iter(algos.values())).model
    params = {k: v.to(device) for k, v in model.init(first.seed).items()}
    batch = meta_batch(first, data, 0).to(device)
    states = {label: algo.init_state(params) for label, algo in algos.items()}

    reference = next(iter(algos.values()))
    timers: dict[str, Callable[[], Any]] = {
        "B": baseline_pass(reference, params, batch),
        "B task by task": baseline_pass(reference, params, batch, task_by_task=True),
    }
    for label, algo in algos.items():
        timers[label] = lambda algo=algo, state=states[label]: algo.meta_step(state, batch)
    maml_label = next((label for label, config in variants.items() if config.algo == "maml"), None)
    if compare_higher:
        if maml_label is None:
            raise ValueError("--compare-higher compares against second-order MAML: include maml in --algos")
        maml = algos[maml_label]
        timers["maml (higher)"] = lambda: higher_meta_step(maml, states[maml_label], batch)

    # sampling: a new meta-step's tasks every call, as in training, once the reader's in-memory caches hold what
    # the first meta-steps read (steady state; the first touch of each image is paid once per run)
    for step in range(1, SAMPLER_WARMUP_STEPS + 1):
        meta_batch(first, data, step)
    steps = itertools.count(SAMPLER_WARMUP_STEPS + 1)
    timers["sample meta-batch"] = lambda: meta_batch(first, data, next(steps))
    evaluator, eval_state = next(iter(algos.values())), next(iter(states.values()))
    episodes = evaluation_batch(first, data, first.eval_batch).to(device)
    singles = one_by_one(episodes)
    timers["evaluate batched"] = lambda: adapt_and_score(evaluator, eval_state, episodes)
    timers["evaluate one by one"] = lambda: [adapt_and_score(evaluator, eval_state, single) for single in singles]

    load_before = os.getloadavg()[0]
    times = interleave(timers, repeats, warmup, device, on_round)
    load_after = os.getloadavg()[0]
    out_of_memory = times.attrs["out_of_memory"]
    if not set(out_of_memory) <= set(variants):
        raise ValueError(f"{', '.join(n for n in out_of_memory if n not in variants)} ran out of memory on {device}")
    if len(out_of_memory) == len(variants):
        raise ValueError(f"every variant ran out of memory on {device}: {', '.join(out_of_memory)}")
    median = medians(times)
    _, baseline_flops = counting_flops(timers["B"])

    def new_row(label: str, config: RunConfig, task_batching: str, **fields: Any) -> dict[str, Any]:
        return dict.fromkeys(ROW_FIELDS) | {
            "variant": label, "algo": config.algo, "inner_steps": config.inner_steps, "task_batching": task_batching,
        } | fields

    def timed_row(label: str, config: RunConfig, task_batching: str, passes: int, flops: int) -> dict[str, Any]:
        ratios = round_ratios(times, label, "B", config.inner_steps + 1)
        return new_row(
            label, config, task_batching, passes=passes, seconds=float(median[label]),
            ratio_to_n1B=float(ratios.median()), ratio_min=float(ratios.min()), ratio_max=float(ratios.max()),
            flops_to_n1B=flops / ((config.inner_steps + 1) * baseline_flops),
        )

    rows = []
    for label, config in variants.items():
        task_batching = algos[label].resolved_task_batching(tuple(batch))
        if label in out_of_memory:
            rows.append(new_row(label, config, task_batching, error="out of memory"))
            continue
        (_, metrics), flops = counting_flops(lambda: algos[label].meta_step(states[label], batch))
        rows.append(timed_row(label, config, task_batching, int(metrics["passes"]), flops))
    higher_result = None
    if compare_higher:
        maml_config = variants[maml_label]
        ours_over_higher = round_ratios(times, maml_label, "maml (higher)")
        ours_grad = meta_gradient(algos[maml_label], states[maml_label], batch)
        (theirs_grad, _), higher_flops = counting_flops(
            lambda: higher_meta_gradient(algos[maml_label], states[maml_label].params, batch)
        )
        rows.append(timed_row("maml (higher)", maml_config, "loop", maml_config.inner_steps + 1, higher_flops))
        higher_result = {
            "against": maml_label,
            "ours_over_higher_median": float(ours_over_higher.median()),
            "rounds_ours_faster": int((ours_over_higher < 1).sum()),
            "rounds": int(len(ours_over_higher)),
            "gradient": gradient_agreement(ours_grad, theirs_grad),
        }

    if memory:
        measured = [row for row in rows if row["error"] is None]
        probes = [(variants[row["variant"]], False) for row in measured if row["variant"] in variants]
        probes += [(variants[maml_label], True)] if compare_higher else []
        for row, peak in zip(measured, meta_step_memory(probes)):
            row["peak_mem_mb"] = peak

    batched_scores = adapt_and_score(evaluator, eval_state, episodes)
    single_scores = torch.cat([adapt_and_score(evaluator, eval_state, s) for s in singles], dim=1)
    count = episodes.tasks
    fastest = min((row for row in rows if row["error"] is None), key=lambda row: row["seconds"])
    return {
        "settings": {
            "repeats": repeats,
            "warmup": warmup,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average": [load_before, load_after],  # 1-minute load before and after the timing rounds
            "memory_method": MEMORY_METHODS[device.type] if memory else None,
            "tasks": batch.tasks,
            "k": first.k,
            "query_size": first.query_size,
            "image_size": list(batch.support_x.shape[-2:]),
            "parameters": sum(p.numel() for p in params.values()),
        },
        "baseline": {
            "seconds": float(median["B"]),
            "images": batch.tasks * first.k,
            "flops": baseline_flops,
            "task_by_task_seconds": float(median["B task by task"]),
            "task_by_task_ratio": float(round_ratios(times, "B task by task", "B").median()),
        },
        "meta_steps": rows,
        "evaluation": {
            "episodes": count,
            "batched_eps_per_s": count / float(median["evaluate batched"]),
            "one_by_one_eps_per_s": count / float(median["evaluate one by one"]),
            "speedup": float(round_ratios(times, "evaluate one by one", "evaluate batched").median()),
            "max_iou_diff": float((batched_scores - single_scores).abs().max()),
        },
        "data": {
            "batches_per_s": 1 / float(median["sample meta-batch"]),
            "fastest_variant": fastest["variant"],
            "meta_steps_per_s": 1 / fastest["seconds"],
            "headroom": fastest["seconds"] / float(median["sample meta-batch"]),
        },
        "higher": higher_result,
        "times": times.to_dict("records"),
    }


def costs(result: dict[str, Any], variants: dict[str, RunConfig]) -> Iterable[tuple[RunConfig, float, float]]:
    """(configuration, seconds per training step, seconds per evaluation episode) of every variant of a
    :func:`measure` result: a training step is a meta-step plus sampling its tasks, as ``run`` does; evaluation
    episodes are adapted ``eval_batch`` at a time, as ``run`` does."""
    sample = 1 / result["data"]["batches_per_s"]
    episode = 1 / result["evaluation"]["batched_eps_per_s"]
    for row in result["meta_steps"]:
        config = variants.get(row["variant"])
        if config is not None and row["error"] is None:
            yield config, row["seconds"] + sample, episode
