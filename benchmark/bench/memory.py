"""Memory probes: the peak extra memory of one meta-step, each in a fresh process (so one variant's
freed-but-cached memory cannot hide the next one's): on CPU the growth of the resident set size (RSS), since
``tracemalloc`` does not see torch's allocator; on a GPU the growth of ``torch.cuda.max_memory_allocated``."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from algorithms import MetaState
from benchmark.bench.against_higher import higher_meta_step
from benchmark.bench.timing import synchronize
from benchmark.config import RunConfig
from benchmark.runner import build, device_of, meta_batch
from tasks.batch import TaskBatch
from tasks.livecell import open_livecell

MEMORY_METHODS = {
    "cpu": "RSS growth during one meta-step, fresh process",
    "cuda": "torch.cuda.max_memory_allocated growth during one meta-step, fresh process",
}


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

    Each is measured in a fresh process, one after another (two probes of vmapped second-order variants at a
    time, beside the timing process's cached memory, can fill a machine until it thrashes), after the data,
    model and batch are in memory and one warm-up step on a small image: on CPU, the peak RSS (``VmHWM``, reset
    just before) minus the RSS before the step; on a GPU, the peak of ``torch.cuda.max_memory_allocated`` minus
    what was allocated before.
    """
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        threads = torch.get_num_threads()
        return [pool.submit(_meta_step_memory_here, config, via_higher, threads).result() for config, via_higher in configs]
