"""The pytest-benchmark suite: skipped in the normal test run (``--benchmark-skip`` in pyproject's addopts), run on
demand with ``python -m pytest tests/benchmarks --benchmark-only``.

It times the parts one at a time, each on its own, with pytest-benchmark's statistics; ``python -m benchmark bench``
is the instrument that compares them against each other (interleaved rounds, ratios to B).
"""

from __future__ import annotations

import pytest

from benchmark.config import RunConfig, resolve
from tasks.livecell import LiveCell, open_livecell


@pytest.fixture(scope="session")
def default_config(synthetic_root) -> RunConfig:
    """The default preset (what a sweep runs on CPU) on the small synthetic set."""
    return resolve("default", data_root=str(synthetic_root))


@pytest.fixture(scope="session")
def default_data(default_config) -> LiveCell:
    return open_livecell(default_config.data_root)
