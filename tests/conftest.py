"""Shared fixtures. The real LIVECell sample is found through $LIVECELL_SAMPLE (CC BY-NC data, never copied into the
repository); tests that need it skip where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_root() -> Path:
    root = os.environ.get("LIVECELL_SAMPLE")
    if not root or not Path(root, "annotations").is_dir():
        pytest.skip("real LIVECell sample not available (set LIVECELL_SAMPLE)")
    return Path(root)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the tests' mask caches and generated data out of the user's cache, unless one is named."""
    if "FEWSHOT_CELLSEG_CACHE" not in os.environ:
        os.environ["FEWSHOT_CELLSEG_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic LIVECell (18 images per line: 11 train, 3 val, 6 test), generated once per session."""
    from tasks.synth import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "livecell", seed=0, images_per_line=18)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' models are tiny: they run fastest on one thread, and the machine's two cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
