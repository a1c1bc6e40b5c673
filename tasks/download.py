"""Fetch the official LIVECell files into the layout :mod:`tasks.livecell` reads.

From the public bucket's ``LIVECell_dataset_2021/`` prefix: ``images.zip`` (1.3 GB unpacked; unpacked
into ``ROOT/images/``, then deleted) and the annotation files, LIVECell-wide and per line (stored
as-is under ``ROOT/annotations/``). Each file's size is asked first (HEAD); a file already
complete is skipped; a partial one (``*.part``) is resumed with an HTTP Range request; a transfer
that ends short of the announced size is an error that a rerun resumes. Standard library only.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tasks.catalogue import LINES
from tasks.errors import DataError

BASE_URL = "https://livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021/"
IMAGES_ARCHIVE = "images.zip"
UNPACKED_MARKER = ".images-zip-unpacked"  # under ROOT/images/: the archive's size, once unpacked
CHUNK = 1 << 20


def remote_files() -> list[str]:
    """Paths under the base URL, archive first."""
    splits = ("train", "val", "test")
    wide = [f"annotations/LIVECell/livecell_coco_{split}.json" for split in splits]
    single = [f"annotations/LIVECell_single_cells/{line.folder}/{split}.json" for line in LINES for split in splits]
    return [IMAGES_ARCHIVE, *wide, *single]


def download(root: Path | str, base_url: str = BASE_URL, progress=None, timeout: float = 60.0) -> dict[str, str]:
    """Fetch every file of :func:`remote_files` into ``root``; returns {path: "fetched"|"resumed"|"present"}.

    ``progress``: a ``rich.progress.Progress`` to show the bytes on (None: silent).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    sizes = {name: _remote_size(base_url + name, timeout) for name in remote_files()}
    marker = root / "images" / UNPACKED_MARKER
    todo = {name: size for name, size in sizes.items() if not _present(root, name, size, marker)}
    outcome = {name: "present" for name in sizes if name not in todo}
    task = progress.add_task("LIVECell", total=sum(todo.values())) if progress is not None else None
    for name, size in todo.items():
        if progress is not None:
            progress.update(task, description=PurePosixPath(name).name)
        target = root / name
        if target.is_file() and target.stat().st_size == size:  # an archive fetched but not yet unpacked
            outcome[name] = "present"
            if progress is not None:
                progress.advance(task, size)
        else:
            outcome[name] = _fetch(base_url + name, target, size, timeout, lambda n: progress.advance(task, n) if progress is not None else None)
        if name == IMAGES_ARCHIVE:
            _unpack(target, root)
            marker.write_text(str(size))
            target.unlink()
    if progress is not None:
        progress.update(task, description="LIVECell")
    return outcome


def _present(root: Path, name: str, size: int, marker: Path) -> bool:
    if name == IMAGES_ARCHIVE:
        return marker.is_file() and marker.read_text().strip() == str(size)
    target = root / name
    return target.is_file() and target.stat().st_size == size


def _open(request: urllib.request.Request, timeout: float):
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise DataError(f"{request.full_url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"{request.full_url}: cannot connect ({getattr(err, 'reason', err)})") from None


def _remote_size(url: str, timeout: float) -> int:
    with _open(urllib.request.Request(url, method="HEAD"), timeout) as response:
        length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        raise DataError(f"{url}: the server does not report the file's size")
    return int(length)


def _fetch(url: str, target: Path, size: int, timeout: float, advance) -> str:
    """Download into ``target.part`` (resuming it), check the size, then move it into place."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have < size:
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        with _open(request, timeout) as response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
            elif have:
                expected = f"bytes {have}-{size - 1}/{size}"
                if response.headers.get("Content-Range") != expected:
                    raise DataError(f"{url}: asked to resume at byte {have}, got Content-Range {response.headers.get('Content-Range')!r}")
            advance(have)
            done = have
            with part.open("ab" if have else "wb") as out:
                try:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        advance(len(chunk))
                except (http.client.IncompleteRead, OSError) as err:
                    raise DataError(f"{url}: transfer broke off at byte {done} of {size} ({type(err).__name__}); run again to resume") from None
    got = part.stat().st_size
    if got != size:
        raise DataError(f"{url}: got {got} bytes, the server announced {size}; run again to resume")
    os.replace(part, target)
    return "resumed" if have else "fetched"


def _unpack(archive: Path, root: Path) -> None:
    """Extract ``images.zip`` so its images land in ROOT/images/ (whether or not it has an ``images/`` top folder)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [info.filename for info in zf.infolist() if not info.is_dir()]
            base = root if names and all(n.startswith("images/") for n in names) else root / "images"
            for name in names:
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts:
                    raise DataError(f"{archive}: refusing to unpack {name!r}, a path outside the dataset folder")
            for info in zf.infolist():
                if info.is_dir():
                    continue
                destination = base / info.filename
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: not a valid zip archive ({err}); delete it and download again") from None
