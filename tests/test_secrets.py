"""Secrets stay secret: no key forwarded on a redirect, none in a log line or message, one redaction
for every layer, header values checked before the first request (issue 12, defects 2 and 3)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_pipeline_support import FakeLLM

from clara_lite.core import secrets
from clara_lite.pipeline.generators import ENV_API_KEY, GeneratorError, OpenAICompatible

KEY = "sk-live-4f9d2c-NEVER-SHOWN"
MESSAGES = [{"role": "user", "content": "Summarize this.\n\nText:\nBees dance."}]


class Server:
    """A loopback HTTP server recording each request's path and Authorization header; it answers
    every request with ``status`` and ``headers`` (a redirect when they hold a Location)."""

    def __init__(self, host: str, status: int = 200, headers: dict | None = None):
        self.seen: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append({"method": self.command, "path": self.path,
                                   "auth": self.headers.get("Authorization")})
                body = b'{"choices": [{"message": {"content": "from the other host"}}]}'
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_redirect_to_another_host_gets_no_key_and_is_refused_with_a_reason(caplog):
    with Server("127.0.0.1") as other:
        target = other.url.replace("127.0.0.1", "localhost") + "/v1/chat/completions"  # another origin
        with Server("127.0.0.1", 302, {"Location": target}) as endpoint:
            # the defect, as plain urllib does it: the redirect target receives the key
            request = urllib.request.Request(endpoint.url + "/v1/chat/completions", data=b"{}", method="POST",
                                             headers={"Authorization": f"Bearer {KEY}"})
            urllib.request.urlopen(request, timeout=5).read()
            assert other.seen[-1]["auth"] == f"Bearer {KEY}"
            other.seen.clear()

            gen = OpenAICompatible(endpoint.url + "/v1", "m", KEY, sleep=lambda s: pytest.fail("not retried"))
            with caplog.at_level(logging.DEBUG), pytest.raises(GeneratorError) as err:
                gen.chat(MESSAGES, max_tokens=5)
    assert other.seen == []  # nothing reached the other host, and no reply from it was accepted
    assert endpoint.seen[-1]["auth"] == f"Bearer {KEY}" and len(endpoint.seen) == 2  # urllib's, then ours
    text = str(err.value)
    assert "redirects (HTTP 302)" in text and "not followed" in text and "CLARA_LLM_BASE_URL" in text
    assert "localhost" in text and KEY not in text and KEY not in caplog.text


def test_a_key_pasted_with_its_line_break_is_cleaned_or_refused_without_showing_it():
    with FakeLLM(key=KEY) as llm:  # a trailing newline (a key read from a file) is whitespace around it
        assert OpenAICompatible(llm.url, "m", KEY + "\n").chat(MESSAGES, max_tokens=5).startswith("Summary:")
        assert llm.requests[-1]["auth"] == f"Bearer {KEY}"
    for bad in (KEY[:8] + "\r\n" + KEY[8:], KEY + "\x00", KEY + "€"):
        with pytest.raises(ValueError, match=f"{ENV_API_KEY} holds .* at position") as err:
            OpenAICompatible("http://127.0.0.1:9/v1", "m", bad)
        assert KEY[:8] not in str(err.value) and "Invalid header" not in str(err.value)


def test_a_key_inside_the_base_url_never_reaches_a_log_line_or_message(caplog):
    with FakeLLM(errors=[(503, {})] * 3) as llm:
        gen = OpenAICompatible(f"{llm.url}?api_key={KEY}", "m", None, max_retries=2, sleep=lambda s: None)
        with caplog.at_level(logging.WARNING), pytest.raises(GeneratorError, match="gave up after 3 attempts") as err:
            gen.chat(MESSAGES, max_tokens=5)
        assert llm.requests[0]["path"] == f"/v1/chat/completions?api_key={KEY}"  # the key still travels
    assert caplog.text.count("retrying") == 2 and "api_key=" not in caplog.text
    assert KEY not in caplog.text and KEY not in str(err.value)
    with pytest.raises(ValueError, match="user name or key before '@'") as err:
        OpenAICompatible(f"http://user:{KEY}@127.0.0.1:9/v1", "m", None)
    assert KEY not in str(err.value)


def test_one_redaction_for_every_layer():
    """No module but core/secrets.py defines a redaction of its own: every layer hides keys the same way."""
    import ast
    from pathlib import Path

    package = Path(secrets.__file__).resolve().parents[1]
    owners = [str(p.relative_to(package)) for p in package.rglob("*.py")
              for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
              if isinstance(node, ast.FunctionDef) and node.name == "redact"]
    assert owners == ["core/secrets.py"], owners
    text = f"GET https://u:{KEY}@h.example/x?sig={KEY}&id=7 failed; server said Bearer {KEY}"
    assert secrets.redact(text, KEY) == "GET https://h.example/x?id=7&… failed; server said Bearer ***"
    assert secrets.redact("no url here", None) == "no url here"


def test_cli_reports_a_bad_key_in_one_line_without_a_traceback(tmp_path):
    chunks = tmp_path / "chunks.jsonl"
    chunks.write_text('{"id": "c1", "source": "a.txt", "page": null, "title": "A", "index": 0, "text": "Bees."}\n')
    env = {**os.environ, "CLARA_LLM_BASE_URL": "http://127.0.0.1:9/v1", "CLARA_LLM_MODEL": "m",
           ENV_API_KEY: KEY[:8] + "\n" + KEY[8:]}
    proc = subprocess.run([sys.executable, "-m", "clara_lite.cli", "data", "synthesize", "--input", str(chunks),
                           "--out", str(tmp_path / "synth.jsonl"), "--generator", "api"],
                          env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out
    assert f"{ENV_API_KEY} holds a line break" in out and KEY[:8] not in out and KEY[8:] not in out
