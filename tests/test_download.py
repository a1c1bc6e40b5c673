"""``data download`` against a loopback HTTP server that serves small files made here, with Range
support that the tests can switch off or break."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_livecell import write_dataset

from tasks.download import IMAGES_ARCHIVE, download, remote_files
from tasks.errors import DataError
from tasks.livecell import LiveCell

SERVER_LIFETIME_S = 60  # the server shuts itself down after this, whatever the test does


class Server:
    """Files by URL path; records each request as (method, path, Range header)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        self.ignore_range = False
        self.cut_after: int | None = None  # send only this many body bytes, then drop the connection
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.reply(body=False)

            def do_GET(self):
                self.reply(body=True)

            def reply(self, body: bool):
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                data = server.files.get(self.path.removeprefix("/base/"))
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start, status = 0, 200
                spec = self.headers.get("Range")
                if body and spec and not server.ignore_range:
                    start, status = int(spec.removeprefix("bytes=").rstrip("-")), 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if body:
                    payload = data[start:]
                    self.wfile.write(payload if server.cut_after is None else payload[: server.cut_after])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/base/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.timer = threading.Timer(SERVER_LIFETIME_S, self.httpd.shutdown)

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def gets(self, name: str) -> list:
        return [r for r in self.requests if r[0] == "GET" and r[1] == "/base/" + name]


def bucket(tmp_path: Path, top_folder: bool = True) -> dict[str, bytes]:
    """The bucket's files for a small dataset: images.zip and every annotation file."""
    source = write_dataset(tmp_path / "source", per_line=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((source / "images").rglob("*.tif")):
            relative = path.relative_to(source if top_folder else source / "images")
            zf.write(path, relative.as_posix())
    files = {IMAGES_ARCHIVE: buf.getvalue()}
    empty = json.dumps({"images": [], "annotations": []}).encode()
    for name in remote_files()[1:]:
        path = source / name
        files[name] = path.read_bytes() if path.exists() else empty
    return files


@pytest.fixture
def files(tmp_path) -> dict[str, bytes]:
    return bucket(tmp_path)


def test_fetches_unpacks_and_reads(tmp_path, files):
    root = tmp_path / "root"
    with Server(files) as server:
        outcome = download(root, server.url, timeout=10)
    assert set(outcome) == set(remote_files()) and set(outcome.values()) == {"fetched"}
    assert not (root / IMAGES_ARCHIVE).exists()  # unpacked, then removed
    for name in remote_files()[1:]:
        assert (root / name).read_bytes() == files[name]
    data = LiveCell(root)
    assert [line.name for line in data.lines("test")] == ["BT-474", "MCF7"]
    info = data.images("MCF7", "test")[0]
    assert data.image(info).shape == (80, 96) and data.annotation_file("MCF7", "test").name == "test.json"


def test_archive_without_a_top_images_folder(tmp_path):
    files = bucket(tmp_path, top_folder=False)
    with Server(files) as server:
        download(tmp_path / "root", server.url, timeout=10)
    assert len(LiveCell(tmp_path / "root").images("BT474", "val")) == 4


def test_second_run_fetches_nothing(tmp_path, files):
    root = tmp_path / "root"
    with Server(files) as server:
        download(root, server.url, timeout=10)
        before = len(server.requests)
        outcome = download(root, server.url, timeout=10)
        assert set(outcome.values()) == {"present"}
        assert all(method == "HEAD" for method, _, _ in server.requests[before:])


def test_partial_file_is_resumed_with_a_range_request(tmp_path, files):
    root = tmp_path / "root"
    name = "annotations/LIVECell_single_cells/mcf7/train.json"
    part = root / (name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(files[name][:1000])
    with Server(files) as server:
        outcome = download(root, server.url, timeout=10)
        assert server.gets(name) == [("GET", "/base/" + name, "bytes=1000-")]
    assert outcome[name] == "resumed"
    assert (root / name).read_bytes() == files[name] and not part.exists()


def test_server_that_ignores_range_gets_a_fresh_download(tmp_path, files):
    root = tmp_path / "root"
    name = "annotations/LIVECell_single_cells/mcf7/val.json"
    (root / name).parent.mkdir(parents=True)
    (root / (name + ".part")).write_bytes(b"x" * 500)  # garbage that must not survive
    with Server(files) as server:
        server.ignore_range = True
        outcome = download(root, server.url, timeout=10)
    assert outcome[name] == "fetched" and (root / name).read_bytes() == files[name]


def test_broken_transfer_is_an_error_then_resumes(tmp_path, files):
    root = tmp_path / "root"
    with Server(files) as server:
        server.cut_after = 700
        with pytest.raises(DataError, match=r"images\.zip: .*(broke off|got 700 bytes).*run again to resume"):
            download(root, server.url, timeout=10)
        assert (root / (IMAGES_ARCHIVE + ".part")).stat().st_size == 700
        server.cut_after = None
        outcome = download(root, server.url, timeout=10)
        assert server.gets(IMAGES_ARCHIVE)[-1][2] == "bytes=700-"
    assert outcome[IMAGES_ARCHIVE] == "resumed"
    assert len(LiveCell(root).images("MCF7", "train")) == 4


def test_missing_remote_file(tmp_path, files):
    del files["annotations/LIVECell_single_cells/skov3/test.json"]
    with Server(files) as server, pytest.raises(DataError, match=r"skov3/test\.json: HTTP 404"):
        download(tmp_path / "root", server.url, timeout=10)


def test_no_server(tmp_path):
    with Server({}) as server:
        url = server.url
    with pytest.raises(DataError, match="cannot connect"):
        download(tmp_path / "root", url, timeout=5)


def test_archive_escaping_the_root_is_refused(tmp_path, files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("images/../../evil.txt", b"no")
    files[IMAGES_ARCHIVE] = buf.getvalue()
    with Server(files) as server, pytest.raises(DataError, match="refusing to unpack"):
        download(tmp_path / "root", server.url, timeout=10)
    assert not (tmp_path / "evil.txt").exists()


def test_corrupt_archive(tmp_path, files):
    files[IMAGES_ARCHIVE] = b"PK\x03\x04 not a zip at all" * 10
    with Server(files) as server, pytest.raises(DataError, match="not a valid zip archive"):
        download(tmp_path / "root", server.url, timeout=10)


def test_remote_files_cover_the_official_layout():
    names = remote_files()
    assert names[0] == "images.zip" and len(names) == 1 + 3 + 8 * 3
    assert "annotations/LIVECell/livecell_coco_val.json" in names
    assert "annotations/LIVECell_single_cells/shsy5y/train.json" in names
