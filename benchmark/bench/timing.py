"""Timing rounds: every variant once per round, in a rotating order, in one process.

These machines are noisy (the same code drifts a lot between processes), so a variant is summarised by its
median over the rounds after warm-up, and ratios are taken round by round (each variant against the reference
of its own round) before the median, so drift between rounds cancels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch


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
