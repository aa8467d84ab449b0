"""Concurrent requests decoded together (:mod:`clara_lite.serve.batching`), through a live server on 127.0.0.1:
several clients at once (``/ask``, ``/v1/chat/completions`` plain and streamed) get the answers each would get
alone, in batches of more than one; a stream whose client leaves does not stop the others of its batch; a full
queue is answered 503 with ``Retry-After``."""

from __future__ import annotations

import json
import logging
import threading

import httpx
import pytest
from test_hardware import T4
from test_index import corpus, served_model
from test_index_serving import running

from clara_lite.cli import main
from clara_lite.serve import commands, server
from clara_lite.serve.batching import Batcher, Busy
from clara_lite.serve.index import ClaraIndex
from clara_lite.serve.openai_api import MODEL_NAME, StreamCancelled
from clara_lite.serve.server import create_app

QUESTIONS = ["Where does Ada live?", "What is gamma delta?", "Who works as a cook in Rome?",
             "Which note talks about the river and the old bridge?", "Why?", "What does note 3 say about Ada's job?"]
TOKENS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return ClaraIndex.build(tmp_path_factory.mktemp("batching") / "kb", served_model(), corpus(10), keys=(),
                            progress=False)


def _ask(http: httpx.Client, question: str) -> str:
    r = http.post("/ask", json={"question": question, "max_new_tokens": TOKENS})
    assert r.status_code == 200, r.text
    return r.json()["answer"]


def _chat(http: httpx.Client, question: str) -> str:
    r = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": TOKENS,
                                                "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def _stream(http: httpx.Client, question: str) -> str:
    pieces, chunks = [], 0
    with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL_NAME, "max_tokens": TOKENS, "stream": True,
            "messages": [{"role": "user", "content": question}]}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks += 1
            delta = json.loads(line[6:])["choices"][0]["delta"]
            pieces.append(delta.get("content") or "")
    assert chunks >= 2  # the role, then the text and the last chunk
    return "".join(pieces)


def test_concurrent_clients_are_decoded_together_and_get_the_answers_they_get_alone(index):
    calls = [(_ask, q) for q in QUESTIONS[:2]] + [(_chat, q) for q in QUESTIONS[2:4]] + \
            [(_stream, q) for q in QUESTIONS[4:]]
    got: dict[int, str] = {}
    start = threading.Barrier(len(calls))
    app = create_app(index, max_new_tokens=TOKENS, batch_window_s=0.5)
    with running(app) as base:
        def client(i: int) -> None:
            fn, question = calls[i]
            with httpx.Client(base_url=base, timeout=120) as http:
                start.wait()
                got[i] = fn(http, question)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        batches = app.app.state.batcher.batches
    assert sorted(got) == list(range(len(calls)))
    alone = [index.ask(q, max_new_tokens=TOKENS).text for _, q in calls]  # one at a time, after the server
    assert [got[i] for i in range(len(calls))] == alone
    assert len(set(alone)) > 1 and all(alone)  # real, different answers (the tiny model babbles, each its own)
    assert sum(batches) == len(calls) and max(batches) >= 3, batches  # batched, not one at a time


def test_a_dropped_stream_leaves_the_others_of_its_batch_decoding(index):
    batcher = Batcher(index, max_batch=4, window_s=0.5)
    try:
        seen: list[int] = []

        def leaves(token_id: int) -> None:
            seen.append(token_id)
            raise StreamCancelled

        streamed: list[int] = []
        gone = batcher.submit(QUESTIONS[0], 2, TOKENS, on_token=leaves)
        stays = batcher.submit(QUESTIONS[3], 2, TOKENS, on_token=streamed.append)
        plain = batcher.submit(QUESTIONS[1], 2, TOKENS)
        answer, other = stays.result(120), plain.result(120)
        with pytest.raises(StreamCancelled):
            gone.result(120)
    finally:
        batcher.close()
    assert batcher.batches == [3] and len(seen) == 1  # decoded together; the leaver got one token, then none
    assert answer.text == index.ask(QUESTIONS[3], 2, max_new_tokens=TOKENS).text
    assert other.text == index.ask(QUESTIONS[1], 2, max_new_tokens=TOKENS).text
    assert len(streamed) == answer.new_tokens


def test_a_full_queue_is_answered_503_with_retry_after_and_the_waiting_are_answered(index):
    app = create_app(index, max_new_tokens=TOKENS, max_batch=1, max_queue=1, batch_window_s=0.0)
    batcher = app.app.state.batcher
    gate, started = threading.Event(), threading.Event()

    def slow_reader(_token_id: int) -> None:  # a stream whose client reads slowly holds the decoder
        started.set()
        gate.wait(60)

    with running(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        held = batcher.submit(QUESTIONS[0], 2, TOKENS, on_token=slow_reader)
        assert started.wait(60)
        waiting = batcher.submit(QUESTIONS[1], 2, TOKENS)  # the one place in the queue
        with pytest.raises(Busy):
            batcher.submit(QUESTIONS[2], 2, TOKENS)
        r = http.post("/ask", json={"question": QUESTIONS[2]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
        r = http.post("/v1/chat/completions", json={"model": MODEL_NAME,
                                                    "messages": [{"role": "user", "content": QUESTIONS[2]}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
        r = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "stream": True,
                                                    "messages": [{"role": "user", "content": QUESTIONS[2]}]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        gate.set()
        assert held.result(60).text and waiting.result(60).new_tokens >= 1
        assert _ask(http, QUESTIONS[2]) == index.ask(QUESTIONS[2], max_new_tokens=TOKENS).text  # free again


@pytest.mark.parametrize("device, flags, expected", [
    (None, [], 8),  # this machine: a CPU
    (T4, [], 16),  # a simulated T4 (core.hardware decides from its facts)
    (T4, ["--max-batch", "3"], 3),
])
def test_serve_takes_max_batch_from_the_device_unless_given_and_logs_why(index, monkeypatch, caplog, device, flags,
                                                                        expected):
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))  # built, not listened with
    monkeypatch.setattr(commands, "open_index", lambda args: index)
    if device is not None:
        monkeypatch.setattr(server, "probe_device", lambda _: device)
    with caplog.at_level(logging.INFO, "clara_lite"):
        assert main(["serve", "--index", "kb", *flags]) == 0
    batcher = apps[0].app.state.batcher
    batcher.close()
    assert batcher.max_batch == expected
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("max batch")]
    if flags:
        assert said == [f"max batch {expected} (--max-batch)"]
    else:  # the choice and its reason, naming the device
        assert len(said) == 1 and said[0].startswith(f"max batch {expected} (from the device")
        assert ("CPU" if device is None else T4.name) in said[0]
