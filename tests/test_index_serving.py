"""Serving an index: the HTTP API on 127.0.0.1 (4xx with a reason for bad requests, never a traceback),
the CLI (index build/info/merge, ask --index, chat), and a build sharded over 2 torchrun processes that
merges to the very files one process writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_index import QUESTIONS, corpus, folder_files, served_model

from clara_lite.cli import main
from clara_lite.serve.index import ClaraIndex
from clara_lite.serve.index_folder import IndexChanged
from clara_lite.serve.server import create_app

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_api_answers_on_loopback_and_refuses_bad_requests_with_4xx(tmp_path):
    import uvicorn

    model = served_model()
    index = ClaraIndex.build(tmp_path / "kb", model, corpus(12), keys=(), progress=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(index, max_new_tokens=4), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as http:
            health = http.get("/health").json()
            assert health == {"status": "ok", "chunks": len(index.chunks), "retriever": "clara",
                              "fingerprint": index.meta["fingerprint"]["id"], "generation": 0}
            found = http.post("/search", json={"question": QUESTIONS[0], "k": 3}).json()
            assert [h["id"] for h in found["hits"]] == [h.chunk.id for h in index.search(QUESTIONS[0], 3)]
            asked = http.post("/ask", json={"question": QUESTIONS[1], "k": 2, "max_new_tokens": 4})
            assert asked.status_code == 200
            assert asked.json()["answer"] == index.ask(QUESTIONS[1], 2, max_new_tokens=4).text
            assert len(asked.json()["sources"]) == 2
            bad = {
                "not json": http.post("/ask", content=b"{question: ", headers={"content-type": "application/json"}),
                "no question": http.post("/ask", json={"k": 2}),
                "empty question": http.post("/search", json={"question": ""}),
                "k is 0": http.post("/search", json={"question": "x", "k": 0}),
                "k is text": http.post("/search", json={"question": "x", "k": "five"}),
                "unknown field": http.post("/ask", json={"question": "x", "temperature": 2}),
                "a list": http.post("/ask", json=["x"]),
                "huge answer": http.post("/ask", json={"question": "x", "max_new_tokens": 10**6}),
            }
            for what, response in bad.items():
                assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
                body = response.json()
                assert body["error"] and "Traceback" not in response.text, what
            assert "k: Input should be greater than or equal to 1" in bad["k is 0"].json()["reasons"]
            assert http.get("/nothing").status_code == 404
            assert http.get("/ask").status_code == 405
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "clara_lite.cli", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def test_cli_builds_asks_chats_and_reports_an_index(tmp_path, capsys):
    model = served_model()
    model.save_pretrained(tmp_path / "model")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(corpus(5, seed=21)):
        (docs / f"note{i}.txt").write_text(text, encoding="utf-8")
    (docs / "about.md").write_text("# About\n\nAda lives in Paris and works as a cook.\n", encoding="utf-8")
    m, kb = str(tmp_path / "model"), str(tmp_path / "kb")
    assert main(["index", "build", "--model", m, "--input", str(docs), "--out", kb, "--keys", "none",
                 "--no-progress"]) == 0
    assert main(["index", "info", "--index", kb, "--verify"]) == 0
    info = json.loads(capsys.readouterr().out.split(" chunks\n", 1)[1])
    assert info["verified"] == "every file matches the manifest" and info["chunks"] >= 6
    assert main(["ask", "--model", m, "--index", kb, "Where does Ada live?", "--top-k", "2",
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    index = ClaraIndex.load(kb, model)
    expected = index.ask("Where does Ada live?", 2, max_new_tokens=4)
    assert f"answer: {expected.text}\n" in out and f"#1 {expected.hits[0].score:.3f} {expected.hits[0].chunk.source}" in out
    chat = subprocess.run([sys.executable, "-m", "clara_lite.cli", "chat", "--model", m, "--index", kb,
                           "--top-k", "2", "--max-new-tokens", "4"], input="Where does Ada live?\n\n", cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert chat.returncode == 0 and f"answer: {expected.text}\n" in chat.stdout, chat.stderr[-2000:]
    assert main(["index", "add", "--model", m, "--index", str(tmp_path / "missing"), "--input", str(docs)]) == 2
    assert main(["ask", "--model", m, "Where?"]) == 2  # neither --docs nor --index: a message, exit 2


def test_two_torchrun_processes_build_the_same_index_as_one(tmp_path):
    model = served_model(adapters=("encoder", "decoder"))
    model.save_pretrained(tmp_path / "model")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t, "source": f"doc-{i:03d}"}) + "\n"
                            for i, t in enumerate(corpus(45, seed=8))))
    args = ["index", "build", "--model", str(tmp_path / "model"), "--input", str(docs), "--group-docs", "8",
            "--part-rows", "16", "--batch-size", "4", "--no-progress"]
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]
    out = subprocess.run([sys.executable, *torchrun, "-m", "clara_lite.cli", *args, "--out", str(tmp_path / "two")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "merged 2 shards" in out.stdout
    _cli(*args, "--out", str(tmp_path / "one"))
    two, one = folder_files(tmp_path / "two"), folder_files(tmp_path / "one")
    assert not any(name.startswith("shards/") for name in two)  # the shards were joined and removed
    assert two == one and sum(name.startswith("memory/") for name in one) >= 6

    # --shard by hand, then index merge: the same again
    for i in range(2):
        _cli(*args, "--out", str(tmp_path / "byhand"), "--shard", f"{i}/2")
    shard_meta = json.loads((tmp_path / "byhand/shards/shard-00001-of-00002/index.json").read_text())
    assert shard_meta["shard"] == {"index": 1, "count": 2, "groups": [3, 6]}
    _cli("index", "merge", "--out", str(tmp_path / "byhand"))
    assert folder_files(tmp_path / "byhand") == one


class running:
    """``with running(app) as base_url``: uvicorn on a free loopback port in a thread."""

    def __init__(self, app, **config):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def test_a_running_server_sees_other_processes_add_and_remove_and_never_reads_a_stale_part(tmp_path):
    model = served_model()
    kb = tmp_path / "kb"
    index = ClaraIndex.build(kb, model, corpus(6), keys=(), progress=False)
    other = ClaraIndex.load(kb, model)  # another process's view of the same folder
    stale = ClaraIndex.load(kb, model)
    with running(create_app(index, max_new_tokens=4)) as base, httpx.Client(base_url=base, timeout=60) as http:
        assert http.get("/health").json()["generation"] == 0
        other.add(["Zebras are striped horses of Kenya."], progress=False)
        health = http.get("/health").json()
        assert health["chunks"] == len(other.chunks) and health["generation"] == 1
        sources = {h["source"] for h in http.post("/search", json={"question": "zebras", "k": 100}).json()["hits"]}
        assert sources == {c.source for c in other.chunks} and any(s.startswith("text:") for s in sources)
        gone = other.chunks[0].source
        other.remove([gone])
        hits = http.post("/search", json={"question": "note", "k": 100}).json()["hits"]
        assert gone not in {h["source"] for h in hits} and len(hits) == len(other.chunks)
        asked = http.post("/ask", json={"question": QUESTIONS[0], "max_new_tokens": 4})
        assert asked.status_code == 200 and asked.json()["answer"] == other.ask(QUESTIONS[0], max_new_tokens=4).text
        with pytest.raises(IndexChanged):  # a view two generations old never reads another chunk's memory
            stale.memory_rows(range(len(stale.chunks)))

        part = kb / other.parts[0].file  # damaged under the server: its fault, answered 503 naming no file
        part.write_bytes(part.read_bytes()[:100])
        failed = http.post("/ask", json={"question": QUESTIONS[0], "max_new_tokens": 4})
        assert failed.status_code == 503 and str(tmp_path) not in failed.text and "retry" in failed.json()["error"]


def test_request_limits_413_and_422_and_a_huge_body_never_holds_up_health(tmp_path):
    model = served_model()
    index = ClaraIndex.build(tmp_path / "kb", model, corpus(4), keys=(), progress=False)
    with running(create_app(index, max_new_tokens=4)) as base, httpx.Client(base_url=base, timeout=60) as http:
        big = json.dumps({"question": "x" * (20 << 20)}).encode()
        started = time.monotonic()
        response = http.post("/ask", content=big, headers={"content-type": "application/json"})
        big_s = time.monotonic() - started
        assert response.status_code == 413 and big_s < 5, big_s

        def chunks():
            for _ in range(200):
                yield b" " * 4096

        assert http.post("/search", content=chunks(), headers={"content-type": "application/json"}).status_code == 413
        late = {}

        def post_big():
            with httpx.Client(base_url=base, timeout=60) as h:
                late["status"] = h.post("/search", content=big, headers={"content-type": "application/json"}).status_code

        thread = threading.Thread(target=post_big)
        thread.start()
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        health_s = time.monotonic() - started
        thread.join()
        assert late["status"] == 413 and health_s < 2, health_s
        for body in ({"question": "   \n\t "}, {"question": "x" * 4001}, {"question": "x", "k": 101},
                     {"question": "x", "k": 0}):
            refused = http.post("/search", json=body)
            assert refused.status_code == 422 and str(tmp_path) not in refused.text, body
    print(f"\n20 MB body: 413 in {big_s:.3f} s; /health during another: {health_s:.3f} s")


def test_a_client_that_never_finishes_its_headers_is_disconnected(tmp_path):
    from clara_lite.serve.server import head_timeout_protocol

    index = ClaraIndex.build(tmp_path / "kb", served_model(), corpus(3), keys=(), progress=False)
    with running(create_app(index), http=head_timeout_protocol(0.5)) as base:
        port = int(base.rsplit(":", 1)[1])
        with httpx.Client(base_url=base, timeout=30) as http:  # a kept-alive connection serves on and on
            assert [http.get("/health").status_code for _ in range(3)] == [200, 200, 200]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            started = time.monotonic()
            assert slow.recv(100) == b""  # closed by the server
            waited = time.monotonic() - started
        assert 0.3 < waited < 5, waited


def test_ask_with_only_the_index_loads_the_model_it_recorded_and_another_model_is_still_refused(tmp_path, capsys,
                                                                                              caplog):
    model = served_model()
    model.save_pretrained(tmp_path / "model")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t, "source": f"d{i}"}) + "\n" for i, t in enumerate(corpus(5))))
    kb = str(tmp_path / "kb")
    assert main(["index", "build", "--model", str(tmp_path / "model"), "--input", str(docs), "--out", kb,
                 "--keys", "none", "--no-progress"]) == 0
    assert json.loads((tmp_path / "kb" / "index.json").read_text())["model"] == str((tmp_path / "model").resolve())
    assert main(["index", "info", "--index", kb]) == 0
    assert json.loads(capsys.readouterr().out.split(" chunks\n", 1)[1])["model"] == str(tmp_path / "model")
    assert main(["ask", "--index", kb, QUESTIONS[0], "--top-k", "2", "--max-new-tokens", "4"]) == 0
    expected = ClaraIndex.load(kb, model).ask(QUESTIONS[0], 2, max_new_tokens=4)
    assert f"answer: {expected.text}\n" in capsys.readouterr().out

    served_model(scale=2.0).save_pretrained(tmp_path / "other")  # other weights: the fingerprint refuses them
    assert main(["ask", "--index", kb, "--model", str(tmp_path / "other"), QUESTIONS[0]]) == 2
    assert "was built with another model" in caplog.text
    ClaraIndex.build(tmp_path / "unrecorded", model, corpus(2), keys=(), progress=False)  # from Python: no source
    assert main(["ask", "--index", str(tmp_path / "unrecorded"), QUESTIONS[0]]) == 2
    assert "does not record the model that built it" in caplog.text
    assert main(["ask", "--docs", str(docs), QUESTIONS[0]]) == 2  # only an index records its model
