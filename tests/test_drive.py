"""download(): a real HTTP server on 127.0.0.1 that cuts, stalls, refuses and plays Google Drive.

These run on every gdown the requirements allow: `make test` has the newest, `make test-colab`
Colab's 5.2.2 (no status check, timeout or retries of its own).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from clara_lite.io import drive
from clara_lite.io.drive import DownloadFailed, download, redact

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
HALF, QUARTER = len(PAYLOAD) // 2, len(PAYLOAD) // 4
DRIVE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz0123"
SHARE_LINK = f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing"
FAST = {"timeout": (5, 0.5), "retries": 1}  # a stall is noticed in half a second; two tries in all


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``, honouring ``Range`` when ``server.ranges``. Per path, counters in
    ``server.cut`` (send half the body, then drop the connection), ``server.stall`` (send half, then
    go silent) and ``server.busy`` (answer 503) say how many answers go wrong that way.

    ``/uc?id=`` plays Google Drive: an id in ``server.files`` gets the "can't scan for viruses" page
    whose form links to ``/download`` (the file, with Content-Disposition); other ids get Drive's
    error page."""

    def do_GET(self):
        server, url = self.server, urlsplit(self.path)
        server.seen.append((url.path, self.headers.get("Range")))
        if url.path == "/uc":
            self._drive_page(parse_qs(url.query)["id"][0])
            return
        key = parse_qs(url.query)["id"][0] if url.path == "/download" else url.path
        data = server.files.get(key)
        if data is None:
            self.send_error(404)  # an HTML error page: it must never be saved as the file
            return
        if _take(server.busy, url.path):
            self.send_error(503)
            return
        start = 0
        if self.headers.get("Range") and server.ranges:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if url.path == "/download":
            self.send_header("Content-Disposition", f'attachment; filename="{server.names[key]}"')
        self.end_headers()
        if _take(server.cut, url.path):
            self.wfile.write(body[: len(body) // 2])
            return  # HTTP/1.0: the connection closes short of Content-Length
        if _take(server.stall, url.path):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            server.release.wait(10)  # bounded: the fixture releases every stalled answer at teardown
            return
        self.wfile.write(body)

    def _drive_page(self, file_id: str):
        if file_id in self.server.files:
            form = (f'<form id="download-form" action="{self.server.url}/download" method="get">'
                    f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" '
                    'value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" '
                    'name="uuid" value="0f9e8d7c"></form>')
            page = f"<html><head><title>Google Drive - Virus scan warning</title></head><body>\n{form}\n</body></html>"
        else:
            page = ('<html><body>\n<p class="uc-error-subcaption">Sorry, you can\'t view or download this file '
                    "at this time.</p>\n</body></html>")
        body = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


def _take(counters: dict, path: str) -> bool:
    if counters.get(path, 0) > 0:
        counters[path] -= 1
        return True
    return False


@pytest.fixture
def server(monkeypatch):
    for var in ("NO_PROXY", "no_proxy"):  # a proxy set for the machine must not take loopback requests
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.names = {"/data.jsonl": PAYLOAD, DRIVE_ID: PAYLOAD}, {DRIVE_ID: "stage1 train.jsonl"}
    httpd.seen, httpd.cut, httpd.stall, httpd.busy, httpd.ranges = [], {}, {}, {}, True
    httpd.release = threading.Event()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # the local server stands in for drive.google.com's download endpoint
    monkeypatch.setattr(drive, "DRIVE_FILE_URL", f"{httpd.url}/uc?id={{id}}&export=download")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _all_files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_downloads_a_file_and_into_a_folder(server, tmp_path):
    dest = download(f"{server.url}/data.jsonl", tmp_path / "sub" / "stage1.jsonl", quiet=True)
    assert dest == tmp_path / "sub" / "stage1.jsonl" and dest.read_bytes() == PAYLOAD
    into = download(f"{server.url}/data.jsonl", tmp_path / "sub", quiet=True)
    assert into == tmp_path / "sub" / "data.jsonl" and into.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path / "sub") == []


def test_existing_file_kept_unless_overwrite(server, tmp_path):
    dest = tmp_path / "stage1.jsonl"
    dest.write_bytes(PAYLOAD)
    assert download(f"{server.url}/data.jsonl", dest, quiet=True) == dest  # identical: fine
    dest.write_bytes(b"my own edits")
    with pytest.raises(FileExistsError, match=r"stage1.jsonl already exist\(s\) with different content.*"
                                              r"overwrite=True"):
        download(f"{server.url}/data.jsonl", dest, quiet=True)
    assert dest.read_bytes() == b"my own edits" and _leftovers(tmp_path) == []
    download(f"{server.url}/data.jsonl", dest, overwrite=True, quiet=True)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("ranges", [True, False])
def test_interrupted_transfer_continues(server, tmp_path, ranges):
    server.ranges, server.cut = ranges, {"/data.jsonl": 1}
    dest = download(f"{server.url}/data.jsonl", tmp_path / "stage1.jsonl", quiet=True)
    assert dest.read_bytes() == PAYLOAD and _leftovers(tmp_path) == []
    # asked once to continue mid-file; a server without ranges sends it all again, taken from the start
    assert server.seen == [("/data.jsonl", None), ("/data.jsonl", f"bytes={HALF}-")]


def test_transfer_that_keeps_breaking_fails_then_a_rerun_continues(server, tmp_path):
    server.cut = {"/data.jsonl": 2}
    url = f"{server.url}/data.jsonl?sig=SECRET123"
    with pytest.raises(DownloadFailed) as err:
        download(url, tmp_path / "stage1.jsonl", quiet=True, **FAST)
    # the second try continued the first: half, then half of the rest
    assert str(err.value) == (f"{server.url}/data.jsonl?… broke off at {HALF + QUARTER} of {len(PAYLOAD)} bytes "
                              "(2 tries). Run the same download again to continue from the bytes received.")
    assert [r for _, r in server.seen] == [None, f"bytes={HALF}-"]
    assert not (tmp_path / "stage1.jsonl").exists() and len(_leftovers(tmp_path)) == 1  # the partial file
    dest = download(url, tmp_path / "stage1.jsonl", quiet=True, **FAST)
    assert dest.read_bytes() == PAYLOAD and _leftovers(tmp_path) == []
    assert server.seen[-1] == ("/data.jsonl", f"bytes={HALF + QUARTER}-")


def test_404_is_a_clear_error_and_no_file(server, tmp_path, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(DownloadFailed) as err:
        download(f"{server.url}/missing.jsonl?token=SECRET123", tmp_path / "x.jsonl", quiet=True)
    assert str(err.value) == f"{server.url}/missing.jsonl?… answered HTTP 404 (not found: check the link)"
    assert "SECRET123" not in caplog.text
    assert _all_files(tmp_path) == [] and list(tmp_path.iterdir()) == []  # the error page saved nowhere
    assert len(server.seen) == 1  # a 404 is not tried again


@pytest.mark.parametrize("stalls", [1, 2])
def test_stalled_transfer_times_out(server, tmp_path, stalls):
    server.stall = {"/data.jsonl": stalls}
    started = time.monotonic()
    if stalls == 1:  # the retry continues where the stall began
        dest = download(f"{server.url}/data.jsonl", tmp_path / "stage1.jsonl", quiet=True, **FAST)
        assert dest.read_bytes() == PAYLOAD
        assert server.seen == [("/data.jsonl", None), ("/data.jsonl", f"bytes={HALF}-")]
    else:
        with pytest.raises(DownloadFailed, match=rf"^{server.url}/data.jsonl stalled: no data for 0.5 s "
                                                 r"\(2 tries\)\. Run the same download again"):
            download(f"{server.url}/data.jsonl", tmp_path / "stage1.jsonl", quiet=True, **FAST)
        assert not (tmp_path / "stage1.jsonl").exists()
    assert time.monotonic() - started < 8  # never the 10 s the server would stay silent


def test_busy_server_is_tried_again(server, tmp_path):
    server.busy = {"/data.jsonl": 1}
    assert download(f"{server.url}/data.jsonl", tmp_path / "a.jsonl", quiet=True, **FAST).read_bytes() == PAYLOAD
    server.busy = {"/data.jsonl": 2}
    with pytest.raises(DownloadFailed, match=r"data.jsonl answered HTTP 503 \(2 tries\): the server is failing"):
        download(f"{server.url}/data.jsonl", tmp_path / "b.jsonl", quiet=True, **FAST)
    assert _all_files(tmp_path) == ["a.jsonl"]


def test_drive_link_through_the_confirmation_page(server, tmp_path):
    server.cut = {"/download": 1}
    dest = download(SHARE_LINK, tmp_path, quiet=True)
    assert dest == tmp_path / "stage1 train.jsonl" and dest.read_bytes() == PAYLOAD  # Drive's name for it
    assert [p for p, _ in server.seen] == ["/uc", "/download", "/download"]
    assert server.seen[-1] == ("/download", f"bytes={HALF}-")  # the file URL continued, not the page
    assert download(DRIVE_ID, tmp_path / "copy.jsonl", quiet=True).read_bytes() == PAYLOAD  # a bare id
    assert _leftovers(tmp_path) == []


def test_private_drive_file_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadFailed, match=r"Google Drive would not hand out https://drive.google.com/file/d/"
                                             r"1ZZZZZZZZZZZZZZZZZZZZZZZZZZZ/view: the file is private"):
        download("https://drive.google.com/file/d/1ZZZZZZZZZZZZZZZZZZZZZZZZZZZ/view", tmp_path / "x.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_fails_fast(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match=rf"Could not reach 127.0.0.1 for http://127.0.0.1:{port}/a.zip "
                                             r"\(\w+\): offline, or the server is down"):
        download(f"http://127.0.0.1:{port}/a.zip", tmp_path / "a.zip", quiet=True)
    assert time.monotonic() - started < 20


def _online() -> bool:
    try:
        socket.getaddrinfo("drive.google.com", 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="needs a machine without internet (drive.google.com must not resolve)")
def test_drive_id_offline_is_a_clear_error(tmp_path):
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match=r"Could not reach drive.google.com for 1AbCdEfGhIjKlMnOpQrStUvWxYz"):
        download(DRIVE_ID, tmp_path / "model.zip", quiet=True)
    assert time.monotonic() - started < 20


@pytest.mark.skipif(_online(), reason="needs a machine without internet (drive.google.com must not resolve)")
def test_drive_folder_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadFailed, match=r"Could not reach drive.google.com for https://drive.google.com/"
                                             r"drive/folders/1AbCdEfGhIjKlMnOpQrStUvWxYz0123 \(\w+\): offline"):
        download(f"https://drive.google.com/drive/folders/{DRIVE_ID}", tmp_path / "data", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_not_a_link():
    with pytest.raises(ValueError, match="neither an http"):
        download("not a link", "x")
    with pytest.raises(ValueError, match="names no Drive file"):
        download("https://drive.google.com/drive/my-drive", "x")
    with pytest.raises(ValueError, match="retries must be a whole number"):
        download("https://example.com/a.zip", "x", retries=-1)


def test_redact_hides_credentials_and_tokens():
    assert redact("https://u:p@example.com:8443/f.zip?sig=abc&id=7") == "https://example.com:8443/f.zip?id=7&…"
    share = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz0123/view?usp=sharing"
    assert redact(share) == share  # nothing secret: gdown may show its progress
    assert redact("https://drive.google.com/uc?id=abc&resourcekey=k&export=download") == (
        "https://drive.google.com/uc?id=abc&export=download&…")
    assert redact("1AbCdEfGhIjKlMnOpQrStUvWxYz0123") == "1AbCdEfGhIjKlMnOpQrStUvWxYz0123"
