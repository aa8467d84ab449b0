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


def test_encoded_and_cut_echoes_of_a_key_are_redacted_and_a_slash_in_user_key_at_host_too():
    import base64
    import json
    from urllib.parse import quote, quote_plus

    key = "sk-live/4f9d2c+NEVER=SHOWN"
    echoes = {"json": json.dumps({"echo": key + '"'}), "json with \\/": key.replace("/", "\\/"),
              "url-encoded": quote(key, safe=""), "form-encoded": quote_plus(key),
              "base64": base64.b64encode(key.encode()).decode(),
              "base64 inside Basic": "Basic " + base64.b64encode(f"bob:{key}".encode()).decode(),
              "base64 urlsafe, shifted": base64.urlsafe_b64encode(f"xx{key}".encode()).decode(),
              "cut by one": key[:-1], "cut by two": key[2:], "cut at both ends": key[1:-1]}
    for what, echo in echoes.items():
        shown = secrets.redact(f"HTTP 401: {echo} is not valid", key)
        assert "***" in shown and key[4:-4] not in shown, (what, shown)
        if what.startswith("base64"):
            assert base64.b64encode(key.encode()).decode()[4:-4] not in shown, what
    url = f"https://bob:{key}@api.example.com/v1/chat"
    assert secrets.redact(f"POST {url} failed") == "POST https://api.example.com/v1/chat failed"
    assert secrets.url_credentials(url)
    with pytest.raises(ValueError, match="user name or key before '@'") as err:
        OpenAICompatible(url, "m", None)
    assert "4f9d2c" not in str(err.value) and "sk-live" not in str(err.value)
    assert secrets.redact("see https://medium.com/@ada/post") == "see https://medium.com/@ada/post"


def test_environment_secrets_are_hidden_without_being_named(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz")
    monkeypatch.setenv("SOME_PATH", "/usr/local/share/stuff")
    assert secrets.redact("401 for token hf_abcdefghijklmnopqrstuvwxy (cut)") == "401 for token *** (cut)"
    assert secrets.redact("/usr/local/share/stuff") == "/usr/local/share/stuff"


HUB_SCRIPT = r'''
import sys
from clara_lite.model.hub import HubError, download
from clara_lite.pipeline.sources import open_dataset
for what, call in (("model", lambda: download("someorg/somemodel")), ("dataset", lambda: open_dataset("someorg/someds"))):
    try:
        call()
        print(what, "loaded")
    except (HubError, OSError, ValueError) as err:
        print(what, "ERROR", type(err).__name__, err)
'''


def test_hub_errors_that_echo_hf_token_are_redacted(tmp_path):
    token = "hf_" + "Q7x" * 10
    echo = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # every Hub call answered 400, echoing the request's token (as some proxies do)
            got = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            echo["token"] = got
            body = ('{"error": "invalid credentials ' + got + '"}').encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Message", f"invalid credentials {got}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_TOKEN": token,
               "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "ds"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("HF_DATASETS_OFFLINE", None)
        proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    out = proc.stdout + proc.stderr
    assert echo.get("token") == token  # the Hub client sent it, and the server echoed it back
    assert "model ERROR HubError" in out and "dataset ERROR" in out, out[-3000:]
    assert token not in out and token[3:20] not in out, out[-3000:]
