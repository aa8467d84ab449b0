"""Concurrent users of ``clara-lite serve``: batched decoding against one-at-a-time serving, in one run.

Servers on 127.0.0.1, each in its own process over the same index (a small index of the shared
upstream rows' documents): the default one (requests that arrive close together decoded together,
``--max-batch``), one with ``--max-batch 1`` (one request at a time, as before) and, when llama-cpp-python
is installed, text RAG as a user runs it in llama.cpp or Ollama: the same retriever's top-k chunks as text
in ``clara-lite eval``'s text-rag prompt, the embedded model's own Q4_1 GGUF (as rag_latency.py's (d)),
streamed from one llama.cpp context, one request at a time, through the same OpenAI-shaped endpoint. For
1, 4, 8 and 16 concurrent clients, interleaved (at each count the servers in turn), every client asks
``--requests`` questions one after the other through ``POST /v1/chat/completions`` with
``"stream": true``. Printed per count and server: throughput (questions/s over the wall time), p50 and
p95 latency (request sent to ``[DONE]``), p50 and p95 time to first token (request sent to the first
event: it is sent once the first token is decoded); then the ratios the issue asks for.

    .venv/bin/python benchmarks/serve_concurrency.py                          # SmolLM2-135M fp32, 200 chunks
    .venv/bin/python benchmarks/serve_concurrency.py --model tiny-random --chunks 20 --requests 1   # smoke run

The index is built once into the cache (``$CLARA_LITE_CACHE/bench/``) and reused; ``--rebuild`` builds again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "upstream_pretrain_data.jsonl"


def corpus_and_questions(n_chunks: int):
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = list(dict.fromkeys(d for r in rows for d in r["docs"]))[:n_chunks]
    questions = list(dict.fromkeys(q for r in rows[:400] for q in r["question"]))
    return docs, questions


def build_model(args):
    from clara_lite import ClaraModel

    return ClaraModel.from_base(args.model, seed=0, doc_max_length=args.doc_max_length, compr_rate=args.compr_rate,
                                lora_dropout=0.0)


def index_dir(args) -> Path:
    from clara_lite.core.layout import cache_dir

    if args.index_dir:
        return Path(args.index_dir)
    return (cache_dir() / "bench" /
            f"serve-{args.model}-{args.chunks}-{args.doc_max_length}-{args.compr_rate}-{args.retriever}")


def ensure_index(args) -> Path:
    from clara_lite.core.layout import MANIFEST
    from clara_lite.serve.index import ClaraIndex

    path = index_dir(args)
    if args.rebuild and path.exists():
        shutil.rmtree(path)
    if not (path / MANIFEST).is_file():
        docs, _ = corpus_and_questions(args.chunks)
        start = time.perf_counter()
        ClaraIndex.build(path, build_model(args), docs, keys="minilm" if args.retriever == "minilm" else (),
                         progress=False)
        print(f"index build: {time.perf_counter() - start:.1f} s, {len(docs)} documents")
    return path


def serve_child(args) -> None:
    """This process: the server over ``args.serve`` with ``--max-batch``, until killed."""
    import torch
    import uvicorn

    from clara_lite.serve.index import ClaraIndex
    from clara_lite.serve.server import create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    index = ClaraIndex.load(args.serve, build_model(args), retriever=args.retriever, backend=args.serving)
    index.retriever()
    print(f"decoder: {index.decoder.how}", flush=True)
    app = create_app(index, max_new_tokens=args.new_tokens, default_k=args.k, max_batch=args.max_batch,
                     max_queue=256, max_streams=256)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def serve_text_child(args) -> None:
    """This process: text RAG over ``args.serve_text``'s chunks in llama.cpp, streamed as chat completions."""
    import threading

    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from llama_cpp import Llama

    from clara_lite.model.base import embedded_gguf_path
    from clara_lite.model.inputs import text_answer_messages
    from clara_lite.serve.index import ClaraIndex

    if args.threads:
        torch.set_num_threads(args.threads)
    index = ClaraIndex.load(args.serve_text, build_model(args), retriever=args.retriever, backend="torch")
    tokenizer = index.model.tokenizer
    llm = Llama(model_path=str(embedded_gguf_path()), n_ctx=4096, n_batch=512, n_threads=torch.get_num_threads(),
                verbose=False)
    lock = threading.Lock()  # one llama.cpp context: requests take turns
    print(f"decoder: llama.cpp text RAG, {embedded_gguf_path().name}", flush=True)
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict):  # a `dict` parameter is the JSON body; not Request: under this module's string
        # annotations FastAPI resolves names in its globals, where a locally imported Request is unknown (a 422)
        question = body["messages"][-1]["content"]
        limit = int(body.get("max_tokens") or args.new_tokens)

        def events():
            docs = [h.chunk.text for h in index.search(question, args.k)]  # the prompt `eval`'s text-rag reads
            ids = list(tokenizer.apply_chat_template(text_answer_messages(question, docs), add_generation_prompt=True,
                                                     return_dict=True)["input_ids"])
            with lock:
                n = 0
                for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                    if token == llm.token_eos() or n == limit:
                        break
                    n += 1
                    chunk = {"object": "chat.completion.chunk", "choices": [
                        {"index": 0, "delta": {"content": tokenizer.decode([token])}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, path: Path, max_batch: int, log_dir: Path, text: bool = False):
        self.name = ("text RAG, llama.cpp Q4_1" if text else
                     "one at a time" if max_batch == 1 else f"batched (max {max_batch})")
        self.port = free_port()
        self.log = open(log_dir / f"server-{'text' if text else max_batch}.log", "w")  # noqa: SIM115 - open while it runs
        cmd = [sys.executable, __file__, "--serve-text" if text else "--serve", str(path), "--port", str(self.port),
               "--max-batch", str(max_batch),
               "--model", args.model, "--doc-max-length", str(args.doc_max_length), "--compr-rate",
               str(args.compr_rate), "--retriever", args.retriever, "--new-tokens", str(args.new_tokens),
               "--k", str(args.k), "--serving", args.serving] + (["--threads", str(args.threads)] if args.threads else [])
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 900) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server ({self.name}) exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the server ({self.name}) did not start in {timeout:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def one_request(http, question: str, new_tokens: int) -> tuple[float, float]:
    """(latency, time to first token) of one streamed answer, in seconds."""
    body = {"model": "clara-lite", "stream": True, "max_tokens": new_tokens,
            "messages": [{"role": "user", "content": question}]}
    sent, first = time.perf_counter(), None
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if line.startswith("data: ") and first is None:
                first = time.perf_counter()
            if line == "data: [DONE]":
                break
    return time.perf_counter() - sent, first - sent


def drive(server: Server, clients: int, requests: int, questions: list[str], new_tokens: int) -> dict:
    """``clients`` threads, each asking ``requests`` questions one after another; the figures of all."""
    import httpx

    results: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=server.base, timeout=600) as http:
            start.wait()
            for r in range(requests):
                try:
                    results.append(one_request(http, questions[(c * requests + r) % len(questions)], new_tokens))
                except BaseException as err:  # noqa: BLE001 - reported below
                    errors.append(err)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests to {server.name} failed: {errors[0]}")
    lat, ttft = sorted(x[0] for x in results), sorted(x[1] for x in results)
    return {"n": len(results), "qps": len(results) / wall, "p50": statistics.median(lat), "p95": pct(lat, 95),
            "ttft50": statistics.median(ttft), "ttft95": pct(ttft, 95)}


def pct(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of sorted values."""
    return sorted_values[min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * q // 100) - 1))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--chunks", type=int, default=200, help="documents of the shared upstream data in the index")
    p.add_argument("--clients", default="1,4,8,16", help="concurrent clients, comma-separated")
    p.add_argument("--requests", type=int, default=2, help="questions each client asks, one after another")
    p.add_argument("--new-tokens", type=int, default=16, help="max_tokens of each answer")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--doc-max-length", type=int, default=256)
    p.add_argument("--compr-rate", type=int, default=32)
    p.add_argument("--retriever", default="minilm", choices=["minilm", "bm25"])
    p.add_argument("--max-batch", type=int, default=8, help="the batched server's --max-batch")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each server")
    p.add_argument("--serving", default="auto", choices=("auto", "torch", "llama.cpp"),
                   help="the servers' decoder (auto: llama.cpp on a CPU when installed)")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--index-dir", default=None, help="where the index is built (default: in the cache)")
    p.add_argument("--no-text-rag", action="store_true", help="leave out the llama.cpp text RAG server")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    p.add_argument("--serve-text", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve_child(args)
        return 0
    if args.serve_text:
        serve_text_child(args)
        return 0

    counts = [int(c) for c in args.clients.split(",")]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    path = ensure_index(args)
    _, questions = corpus_and_questions(args.chunks)
    with tempfile.TemporaryDirectory() as logs:
        servers = [Server(args, path, args.max_batch, Path(logs)), Server(args, path, 1, Path(logs))]
        from clara_lite.serve import llama_cpp

        if llama_cpp.available() and not args.no_text_rag:
            servers.append(Server(args, path, 1, Path(logs), text=True))
        else:
            print("text RAG: left out (" + ("--no-text-rag" if args.no_text_rag else
                                            "llama-cpp-python is not installed: make fast-cpu") + ")")
        try:
            for s in servers:
                s.wait()
            for s in servers:  # warm up: the first answers, the prefix cache of each batch size
                drive(s, min(args.max_batch, max(counts)) if s.name.startswith("batched") else 1, 1, questions[::-1],
                      args.new_tokens)
            how = next((line.split("decoder: ", 1)[1] for line in Path(servers[0].log.name).read_text().splitlines()
                        if line.startswith("decoder: ")), "?")
            print(f"\n{args.model} CPU, CLaRa's decoder: {how}; {args.chunks} chunks, k={args.k}, up to {args.new_tokens} new "
                  f"tokens, {args.requests} streamed questions per client, threads {args.threads or 'default'}\n")
            print("| clients | serving | questions | questions/s | p50 latency s | p95 latency s | p50 TTFT s "
                  "| p95 TTFT s |")
            print("|---|---|---|---|---|---|---|---|")
            table: dict[tuple[int, str], dict] = {}
            for c in counts:
                for s in servers:  # interleaved: both servers at each count
                    r = table[c, s.name] = drive(s, c, args.requests, questions, args.new_tokens)
                    print(f"| {c} | {s.name} | {r['n']} | {r['qps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} "
                          f"| {r['ttft50']:.2f} | {r['ttft95']:.2f} |", flush=True)
        finally:
            for s in servers:
                s.stop()
    batched, single = servers[0].name, servers[1].name
    alone = table[counts[0], single]["p50"]
    print(f"\na single request alone ({counts[0]} client, one at a time): p50 {alone:.2f} s")
    for c in counts:
        b, o = table[c, batched], table[c, single]
        text = table.get((c, servers[2].name)) if len(servers) > 2 else None
        print(f"at {c} clients: batched / one-at-a-time throughput {b['qps'] / o['qps']:.2f}x; "
              f"batched p95 / single request {b['p95'] / alone:.2f}x"
              + (f"; batched / text RAG throughput {b['qps'] / text['qps']:.2f}x, p95 {text['p95'] / b['p95']:.2f}x "
                 "lower" if text else ""))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
