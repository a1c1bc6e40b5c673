"""Which machine computed a number. CPU kernels (AVX2, AVX-512) and GPUs differ in the last bits of a result, and
meta-training can amplify that into another answer (docs/performance.md), so runs record it and caches of derived
numbers are keyed by it."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo``'s model name where there is one)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or "unknown CPU"


def processor(device: torch.device) -> str:
    """What computes on ``device``: the GPU's name, or the CPU's with torch's CPU kernels."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels)"
