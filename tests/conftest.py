"""Shared fixtures. The real LIVECell sample (CC BY-NC data, never copied into the repository) is read from
$LIVECELL_SAMPLE, else from ``shared/livecell-sample`` beside the checkout; tests that need it skip where it is absent,
saying where they looked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


BESIDE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "livecell-sample"


def sample_location() -> Path:
    return Path(os.environ.get("LIVECELL_SAMPLE") or BESIDE_CHECKOUT)


@pytest.fixture(scope="session")
def sample_root() -> Path:
    root = sample_location()
    if not (root / "annotations").is_dir():
        pytest.skip(f"real LIVECell sample not found: no {root / 'annotations'} (set LIVECELL_SAMPLE to its folder)")
    return root


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """The tests own their cache folder (parsed annotations, masks, generated data): a user's warm cache must
    change no test's outcome, and no test may write into it."""
    before = os.environ.get("FEWSHOT_CELLSEG_CACHE")
    os.environ["FEWSHOT_CELLSEG_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("FEWSHOT_CELLSEG_CACHE", None)
    else:
        os.environ["FEWSHOT_CELLSEG_CACHE"] = before


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic LIVECell (24 images per line: train, val and test, with at least 4 val images for validation episodes of k = 3), generated once per session."""
    from tasks.synth import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "livecell", seed=0, images_per_line=24)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' models are tiny: they run fastest on one thread, and the machine's two cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
