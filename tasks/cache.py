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


TEMPORARY = "*.tmp"  # what an interrupted atomic_write can leave behind: see remove_temporaries


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, durable: bool = False) -> None:
    """``write(file)`` into a temporary sibling, then rename it over ``path``: readers never see half a file.

    ``durable`` also flushes the data to disk before the rename, so a power cut cannot leave an empty file under
    the final name: worth its cost for a checkpoint that hours of work resume from, not for a cache. Files are
    readable by everyone (0644), like files written with ``open``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: Path) -> None:
    """Delete what writes killed mid-way (``kill -9``) left in ``folder``; call only while no write is under way."""
    for leftover in folder.glob(TEMPORARY):
        leftover.unlink(missing_ok=True)
