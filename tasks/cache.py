"""Where derived data lives (parsed annotations, rasterised masks, the synthetic default set), and the one way
files are written: atomically, so an interrupted write never leaves half a file under the final name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def cache_root() -> Path:
    """$FEWSHOT_CELLSEG_CACHE, else ~/.cache/fewshot-cellseg."""
    env = os.environ.get("FEWSHOT_CELLSEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fewshot-cellseg"


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temporary sibling, then rename it over ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
