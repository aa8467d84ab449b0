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
import torch
from test_index import QUESTIONS, corpus, folder_files, served_model

from clara_lite.cli import main
from clara_lite.serve.index import ClaraIndex
from clara_lite.serve.server import create_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
                              "fingerprint": index.meta["fingerprint"]["id"]}
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
