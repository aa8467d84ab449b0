"""No open door: beyond loopback the server starts only with an API key, which every request must carry
(``Authorization: Bearer``, compared in constant time, never logged), and streams have a limit (429)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from test_index import QUESTIONS, corpus, served_model
from test_index_serving import _free_port, running

from clara_lite.cli import main
from clara_lite.serve.access import API_KEY_ENV, OpenDoor, is_loopback, read_api_key, require_key
from clara_lite.serve.index import ClaraIndex
from clara_lite.serve.openai_api import MODEL_NAME
from clara_lite.serve.server import create_app

ROOT = Path(__file__).resolve().parents[1]
KEY = "k3y-" + "s3cr3t-Z9" * 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_which_hosts_need_a_key_and_what_a_key_must_be(tmp_path):
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "192.168.1.5", "myhost.lan"]))
    require_key("127.0.0.1", None)
    require_key("0.0.0.0", KEY)
    with pytest.raises(OpenDoor, match=API_KEY_ENV):
        require_key("0.0.0.0", None)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert read_api_key(str(key_file), environ={API_KEY_ENV: "other-key-0123456789"}) == KEY  # the file wins
    assert read_api_key(None, environ={API_KEY_ENV: f" {KEY}\n"}) == KEY
    assert read_api_key(None, environ={}) is None
    for bad in ("short", "has a space in it, long enough", ""):
        with pytest.raises(OpenDoor, match="at least 16 printable") as err:
            read_api_key(None, environ={API_KEY_ENV: bad})
        assert not bad or bad not in str(err.value)
    with pytest.raises(OpenDoor, match="cannot be read"):
        read_api_key(str(tmp_path / "missing"))


def test_serve_beyond_loopback_without_a_key_refuses_to_start_before_loading_anything(monkeypatch, caplog):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    caplog.set_level(logging.ERROR, logger="clara_lite")
    started = time.monotonic()
    assert main(["serve", "--model", "no/such/model", "--index", "nowhere", "--host", "0.0.0.0"]) == 2
    assert time.monotonic() - started < 5  # refused before the model would load
    assert "serving on 0.0.0.0 needs an API key" in caplog.text and "--api-key-file" in caplog.text
    caplog.clear()
    monkeypatch.setenv(API_KEY_ENV, "tooShortKey")
    assert main(["serve", "--model", "no/such/model", "--index", "nowhere", "--host", "0.0.0.0"]) == 2
    assert "at least 16" in caplog.text and "tooShortKey" not in caplog.text


def test_a_keyed_server_on_all_interfaces_answers_only_with_the_key_and_never_logs_it(tmp_path):
    model = served_model()
    model.save_pretrained(tmp_path / "model")
    ClaraIndex.build(tmp_path / "kb", model, corpus(6), keys=(), progress=False)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    server = subprocess.Popen(
        [sys.executable, "-m", "clara_lite.cli", "serve", "--model", str(tmp_path / "model"), "--index",
         str(tmp_path / "kb"), "--host", "0.0.0.0", "--port", str(port), "--api-key-file", str(key_file),
         "--max-new-tokens", "4"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                try:
                    if http.get("/health", headers=auth).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            for headers in ({}, {"Authorization": f"Bearer {KEY[:-1]}"}, {"Authorization": KEY},
                            {"Authorization": f"Bearer {KEY}x"}):
                refused = http.post("/ask", json={"question": QUESTIONS[0]}, headers=headers)
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
                assert KEY not in refused.text and "error" in refused.json()
            assert http.post("/ask", json={"question": QUESTIONS[0]}, headers=auth).status_code == 200
            big = http.post("/ask", content=b"x" * (1 << 20), headers={"content-type": "application/json"})
            assert big.status_code == 401  # refused before the body is read
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong-key-0123456789", max_retries=0).models.list()
        assert err.value.code == "invalid_api_key"
        api = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in api.models.list()] == [MODEL_NAME]
        user = [{"role": "user", "content": QUESTIONS[0]}]
        plain = api.chat.completions.create(model=MODEL_NAME, messages=user)
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           api.chat.completions.create(model=MODEL_NAME, messages=user, stream=True) if c.choices)
        assert streamed == plain.choices[0].message.content and plain.sources
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    assert "API key required" in output and "401" in output  # the access log shows the refusals
    assert KEY not in output and KEY[4:20] not in output


def test_streams_beyond_the_limit_get_429_and_a_client_that_leaves_frees_its_stream(tmp_path):
    index = ClaraIndex.build(tmp_path / "kb", served_model(), corpus(6), keys=(), progress=False)
    with running(create_app(index, max_streams=1)) as base:
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
        user = [{"role": "user", "content": QUESTIONS[0]}]
        long = api.chat.completions.create(model=MODEL_NAME, messages=user, max_tokens=1024, stream=True)
        next(iter(long))  # decoding 1024 tokens: seconds
        with pytest.raises(openai.RateLimitError) as err:
            api.chat.completions.create(model=MODEL_NAME, messages=user, max_tokens=4, stream=True)
        assert err.value.code == "too_many_streams"
        assert api.chat.completions.create(model=MODEL_NAME, messages=user, max_tokens=4).choices  # plain: no slot
        long.close()  # the client goes away: the server stops decoding for it at the next token
        left = time.monotonic()
        while True:
            try:
                chunks = list(api.chat.completions.create(model=MODEL_NAME, messages=user, max_tokens=4, stream=True))
                break
            except openai.RateLimitError:
                assert time.monotonic() - left < 1.5, "the stream's decoding went on after its client left"
                time.sleep(0.02)
        assert chunks[-1].choices[0].finish_reason == "length"
        freed = time.monotonic() - left
    print(f"\nstream slot freed {freed:.3f} s after its client left (a whole 1024-token decode: ~2 s)")
