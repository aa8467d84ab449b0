"""download(): a real HTTP server on 127.0.0.1, interrupted transfers, refusals and clear errors."""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from clara_lite.io.drive import DownloadFailed, download, redact

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` when ``server.ranges``; paths in ``server.cut`` send
    half their body once, then drop the connection (an interrupted download)."""

    def do_GET(self):
        server = self.server
        path = urlsplit(self.path).path
        server.seen.append((path, self.headers.get("Range")))
        data = server.files.get(path)
        if data is None:
            self.send_error(404)
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
        self.end_headers()
        if path in server.cut:
            server.cut.discard(path)
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("NO_PROXY", "no_proxy"):  # a proxy set for the machine must not take loopback requests
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.seen, httpd.cut, httpd.ranges = {"/data.jsonl": PAYLOAD}, [], set(), True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


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
    server.ranges, server.cut = ranges, {"/data.jsonl"}
    dest = download(f"{server.url}/data.jsonl", tmp_path / "stage1.jsonl", quiet=True)
    assert dest.read_bytes() == PAYLOAD and _leftovers(tmp_path) == []
    resumed = [r for _, r in server.seen if r]
    assert resumed == [f"bytes={len(PAYLOAD) // 2}-"]  # asked once to continue mid-file
    assert len(server.seen) == (2 if ranges else 3)  # without range support: one fresh download more


def test_404_is_a_clear_error_without_the_token(server, tmp_path, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(DownloadFailed) as err:
        download(f"{server.url}/missing.jsonl?token=SECRET123", tmp_path / "x.jsonl", quiet=True)
    assert str(err.value) == f"{server.url}/missing.jsonl?… answered HTTP 404 (not found: check the link)"
    assert "SECRET123" not in caplog.text and not (tmp_path / "x.jsonl").exists()


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
        download("1AbCdEfGhIjKlMnOpQrStUvWxYz0123", tmp_path / "model.zip", quiet=True)
    assert time.monotonic() - started < 20


def test_not_a_link():
    with pytest.raises(ValueError, match="neither an http"):
        download("not a link", "x")


def test_redact_hides_credentials_and_tokens():
    assert redact("https://u:p@example.com:8443/f.zip?sig=abc&id=7") == "https://example.com:8443/f.zip?id=7&…"
    share = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz0123/view?usp=sharing"
    assert redact(share) == share  # nothing secret: gdown may show its progress
    assert redact("https://drive.google.com/uc?id=abc&resourcekey=k&export=download") == (
        "https://drive.google.com/uc?id=abc&export=download&…")
    assert redact("1AbCdEfGhIjKlMnOpQrStUvWxYz0123") == "1AbCdEfGhIjKlMnOpQrStUvWxYz0123"
