"""Answer latency of three ways to answer a question over the same corpus, interleaved in one process.

(a) text RAG: MiniLM + FAISS top-k, the k chunks' text in the base model's prompt (seed 002's design);
(b) CLaRa compressing the same k chunks at query time, then answering (what generate_from_questions does);
(c) CLaRa from the pre-compressed index (``ClaraIndex.ask``: MiniLM + FAISS, k memory blocks read from disk,
    decoded as the serving plan picks: llama.cpp with the merged decoder's 8-bit GGUF when llama-cpp-python is
    installed (``make fast-cpu``), else the PyTorch serving copy);
(c') the same index answered by the PyTorch fp32 serving copy (shown when (c) is llama.cpp);
(d) text RAG in llama.cpp: (a)'s prompt tokens, the embedded model's own Q4_1 GGUF (what Ollama runs for seed
    002's users), when llama-cpp-python is installed.

Printed per question and as medians: end-to-end latency, time to first token (TTFT), prompt tokens, peak
RSS during the call (VmHWM, reset before each call; the process holds all three systems); plus the index's
build time, bytes per chunk and load time; then (c) alone in fresh processes over the index and over a
10x copy of it (peak RSS must stay flat: the memory vectors are read on demand).

    .venv/bin/python benchmarks/rag_latency.py                        # SmolLM2-135M fp32, 1,000 chunks, 20 questions
    .venv/bin/python benchmarks/rag_latency.py --model tiny-random --chunks 20 --questions 2   # smoke run

The index is built once into the cache (``$CLARA_LITE_CACHE/bench/``) and reused; ``--rebuild`` builds again.
Every call generates exactly ``--new-tokens`` tokens (no early stop), so all do equal decoding work; decode
per token is (end-to-end - TTFT) / (new tokens - 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "upstream_pretrain_data.jsonl"
TEXT_SYSTEM = ("You are a helpful assistant. Your task is to extract relevant information from provided documents "
               "and to answer to questions as briefly as possible.")


def hwm_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) of this process
        f.write("5")


def hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def corpus_and_questions(n_chunks: int, n_questions: int):
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = list(dict.fromkeys(d for r in rows for d in r["docs"]))[:n_chunks]
    step = max(1, len(rows) // n_questions)
    questions = [rows[i * step]["question"][0] for i in range(n_questions)]
    return docs, questions


class FirstToken:
    """A transformers streamer that notes when the first new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.calls, self.at = 0, 0.0

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self):
        pass


def text_rag(base, tokenizer, retriever, chunks, question, k, new_tokens):
    import torch

    _, rows = retriever.search([question], k)
    context = "\n\n".join(f"[{j + 1}] {chunks[r].text}" for j, r in enumerate(rows[0]))
    messages = [{"role": "system", "content": TEXT_SYSTEM},
                {"role": "user", "content": f"Documents:\n{context}\n\nQuestion: {question}"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    streamer = FirstToken()
    with torch.no_grad():
        base.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    return ids["input_ids"].shape[1], streamer.at


def text_rag_prompt(tokenizer, retriever, chunks, question, k) -> list[int]:
    _, rows = retriever.search([question], k)
    context = "\n\n".join(f"[{j + 1}] {chunks[r].text}" for j, r in enumerate(rows[0]))
    messages = [{"role": "system", "content": TEXT_SYSTEM},
                {"role": "user", "content": f"Documents:\n{context}\n\nQuestion: {question}"}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


def llama_text_rag(llm, tokenizer, retriever, chunks, question, k, new_tokens):
    """(a)'s prompt in llama.cpp, greedy, exactly ``new_tokens`` (its generator never stops by itself)."""
    ids = text_rag_prompt(tokenizer, retriever, chunks, question, k)
    first, n = 0.0, 0
    for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        n += 1
        if n == 1:
            first = time.perf_counter()
        if n == new_tokens:
            break
    return len(ids), first


def query_time_compression(model, retriever, chunks, question, k, new_tokens):
    import torch

    _, rows = retriever.search([question], k)
    memory, _ = model.compress_documents([chunks[r].text for r in rows[0]])
    dec = model._answer_prompts([question], k)
    embeds = model.decoder_embeds(dec["input_ids"], memory)
    streamer = FirstToken()
    with torch.no_grad(), model.adapter("decoder"):
        model.lm.generate(inputs_embeds=embeds, attention_mask=dec["attention_mask"], max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=model.tokenizer.pad_token_id,
                          streamer=streamer)
    return dec["input_ids"].shape[1], streamer.at


def from_index(index, question, k, new_tokens):
    answer = index.ask(question, k, max_new_tokens=new_tokens, stop_at_eos=False)
    return answer.prompt_tokens, answer.first_token_at


def build_model(args):
    from clara_lite import ClaraModel

    return ClaraModel.from_base(args.model, seed=0, doc_max_length=args.doc_max_length, compr_rate=args.compr_rate,
                                lora_dropout=0.0)


def index_dir(args) -> Path:
    from clara_lite.core.layout import cache_dir

    if args.index_dir:
        return Path(args.index_dir)
    return cache_dir() / "bench" / f"rag-{args.model}-{args.chunks}-{args.doc_max_length}-{args.compr_rate}"


def ensure_index(args, model, docs) -> tuple[Path, float | None]:
    from clara_lite.core.layout import MANIFEST
    from clara_lite.serve.index import ClaraIndex

    path = index_dir(args)
    record = path.with_suffix(".build.json")
    if args.rebuild and path.exists():
        shutil.rmtree(path)
    if (path / MANIFEST).is_file() and record.is_file():
        return path, json.loads(record.read_text())["seconds"]
    start = time.perf_counter()
    ClaraIndex.build(path, model, docs, keys="minilm", progress=True)
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"seconds": seconds}))
    return path, seconds


def replicate(src: Path, dst: Path, times: int) -> Path:
    """An index of ``times`` copies of ``src`` (its part files copied under new group numbers): a corpus
    ``times`` larger without compressing it again, to see what (c) needs as the corpus grows."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from clara_lite.core.layout import (
        INDEX_CHUNKS,
        INDEX_FILE,
        KIND_INDEX,
        index_part_file,
        write_json,
        write_manifest,
    )

    if (dst / "manifest.json").is_file():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "memory").mkdir(parents=True)
    meta = json.loads((src / INDEX_FILE).read_text())
    rows = [json.loads(line) for line in (src / INDEX_CHUNKS).read_text().splitlines()]
    parts, out_rows = [], []
    for copy in range(times):
        start = 0
        for p in meta["parts"]:
            part_rows = [dict(r, id=f"{r['id']}-{copy}", source=f"{r['source']}#{copy}")
                         for r in rows[start:start + p["rows"]]]
            group = p["group"] + copy * meta["next_group"]
            ids = hashlib.sha256("\n".join(r["id"] for r in part_rows).encode()).hexdigest()
            # the same tensors under the new rows' ids: a part file names the rows it holds (the index checks)
            with safe_open(str(src / index_part_file(p["group"], p["sub"])), "pt") as f:
                tensors, file_meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
            save_file(tensors, str(dst / index_part_file(group, p["sub"])), metadata={**file_meta, "ids": ids})
            parts.append({**p, "group": group, "ids": ids})
            out_rows += part_rows
            start += p["rows"]
    with open(dst / INDEX_CHUNKS, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in out_rows)
    write_json(dst / INDEX_FILE, {**meta, "parts": parts, "n_chunks": len(out_rows),
                                  "next_group": meta["next_group"] * times})
    write_manifest(dst, KIND_INDEX)
    return dst


def only_index(args) -> None:
    """(c) alone, in this fresh process: load, answer the questions, print peak RSS."""
    from clara_lite.serve.decoding import ServingDecoder
    from clara_lite.serve.index import ClaraIndex

    model = build_model(args)
    _, questions = corpus_and_questions(args.chunks, args.questions)
    decoder = ServingDecoder(model)  # the serving copy belongs to the model: made before the index is opened
    hwm_reset()  # from here on: what the index and answering add
    before = hwm_mb()
    start = time.perf_counter()
    index = ClaraIndex.load(args.only_index, model, retriever="minilm")
    index.retriever()
    index._decoder = decoder
    load = time.perf_counter() - start
    times = []
    for q in questions:
        t0 = time.perf_counter()
        from_index(index, q, args.k, args.new_tokens)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"chunks": len(index.chunks), "load_s": load, "median_s": statistics.median(times),
                      "peak_rss_mb": peak, "model_rss_mb": before, "serving_peak_mb": hwm_mb()}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--chunks", type=int, default=1000, help="documents of the shared upstream data (>= chunks)")
    p.add_argument("--questions", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--doc-max-length", type=int, default=256)
    p.add_argument("--compr-rate", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=10, help="questions per ask_many batch")
    p.add_argument("--grow", type=int, default=10, help="(c) alone over the index copied this many times; 0: skip")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--index-dir", default=None, help="where the index is built (default: in the cache)")
    p.add_argument("--only-index", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only_index:
        only_index(args)
        return 0

    from clara_lite.model.base import load_base_model
    from clara_lite.serve.index import ClaraIndex

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          f"(the machine is shared with other engineers), torch threads {torch.get_num_threads()}")
    docs, questions = corpus_and_questions(args.chunks, args.questions)
    model = build_model(args)
    path, build_s = ensure_index(args, model, docs)

    start = time.perf_counter()
    index = ClaraIndex.load(path, model, retriever="minilm")
    retriever = index.retriever()
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    _ = index.decoder  # the merged serving copy of the decoder
    merge_s = time.perf_counter() - start
    info = index.info()
    total_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    base, tokenizer = load_base_model(args.model)
    base.eval()
    chunks = index.chunks
    print(f"corpus: {len(docs)} documents -> {len(chunks)} chunks of <= {args.doc_max_length} tokens; "
          f"{len(questions)} questions, k={args.k}, {args.new_tokens} new tokens, {args.model} fp32 CPU")
    print(f"index build: {build_s:.1f} s ({len(chunks) / build_s:.1f} chunks/s)" if build_s else "index build: -")
    print(f"index bytes per chunk: {info['bytes_per_chunk']:.0f} memory vectors ({info['dtype']}, "
          f"{info['n_mem']} x {info['hidden_size']} + MiniLM key), {total_bytes / len(chunks):.0f} with texts")
    print(f"index load: {load_s:.2f} s (chunks, MiniLM keys into FAISS, MiniLM model); "
          f"serving copy (decoder merged): {merge_s:.2f} s; prompt prefix prefilled once: "
          f"{len(index.decoder.prefix_ids)} tokens")

    print(f"(c) decodes with {index.decoder.how}")
    systems = {
        "a": lambda q: text_rag(base, tokenizer, retriever, chunks, q, args.k, args.new_tokens),
        "b": lambda q: query_time_compression(model, retriever, chunks, q, args.k, args.new_tokens),
        "c": lambda q: from_index(index, q, args.k, args.new_tokens),
    }
    from clara_lite.serve import llama_cpp

    if llama_cpp.available() and index.decoder.how.startswith("llama.cpp"):
        torch_index = ClaraIndex.load(path, model, retriever="minilm", backend="torch")
        torch_index._retriever = retriever
        systems["c'"] = lambda q: from_index(torch_index, q, args.k, args.new_tokens)
    if llama_cpp.available():
        from llama_cpp import Llama

        from clara_lite.model.base import embedded_gguf_path

        llm = Llama(model_path=str(embedded_gguf_path()), n_ctx=4096, n_batch=512,
                    n_threads=torch.get_num_threads(), verbose=False)
        systems["d"] = lambda q: llama_text_rag(llm, tokenizer, retriever, chunks, q, args.k, args.new_tokens)
    else:
        print("(d) llama.cpp text RAG: skipped, llama-cpp-python is not installed (make fast-cpu)")
    for fn in systems.values():  # warm-up: first calls pay one-time costs
        fn(questions[0])
    results = {name: [] for name in systems}
    print("\n| q | system | end-to-end s | TTFT s | prompt tokens | peak RSS MB |\n|---|---|---|---|---|---|")
    n_sys = len(systems)
    for i, q in enumerate(questions):
        names = list(systems)[i % n_sys:] + list(systems)[:i % n_sys]  # interleaved, the order rotating
        for name in names:
            hwm_reset()
            t0 = time.perf_counter()
            prompt, first = systems[name](q)
            total = time.perf_counter() - t0
            row = {"e2e": total, "ttft": first - t0, "prompt": prompt, "rss": hwm_mb(),
                   "per_token": (total - (first - t0)) / max(args.new_tokens - 1, 1)}
            results[name].append(row)
            print(f"| {i + 1} | {name} | {row['e2e']:.3f} | {row['ttft']:.3f} | {prompt} | {row['rss']:.0f} |")
    med = {n: {k: statistics.median(r[k] for r in rows) for k in ("e2e", "ttft", "prompt", "rss", "per_token")}
           for n, rows in results.items()}
    print("\nmedians over the questions:\n| system | end-to-end s | TTFT s | decode ms/token | prompt tokens | "
          "peak RSS MB |\n|---|---|---|---|---|---|")
    labels = {"a": "(a) text RAG, transformers fp32", "b": "(b) query-time compression",
              "c": "(c) pre-compressed index, " + ("llama.cpp q8_0" if "c'" in med else "PyTorch"),
              "c'": "(c') pre-compressed index, PyTorch fp32", "d": "(d) text RAG, llama.cpp Q4_1"}
    for n, m in med.items():
        print(f"| {labels[n]} | {m['e2e']:.3f} | {m['ttft']:.3f} | {m['per_token'] * 1000:.1f} | {m['prompt']:.0f} | "
              f"{m['rss']:.0f} |")
    print(f"\n(c) vs (a): {med['a']['e2e'] / med['c']['e2e']:.2f}x end to end (target >= 2.5x), "
          f"{med['a']['ttft'] / med['c']['ttft']:.2f}x on TTFT (target >= 6x); "
          f"(c) vs (b): {med['b']['e2e'] / med['c']['e2e']:.2f}x end to end")
    if "d" in med:
        ratio, per = med["d"]["e2e"] / med["c"]["e2e"], med["c"]["per_token"] / med["d"]["per_token"]
        print(f"(c) vs (d) llama.cpp text RAG: {ratio:.2f}x end to end (target >= 4x: "
              f"{'met' if ratio >= 4 else 'MISSED'}); (c)'s decode per token {per:.2f}x (d)'s (target <= 1x: "
              f"{'met' if per <= 1 else 'MISSED'})")
    print(f"index load {load_s:.2f} s for {len(chunks)} chunks (target < 2 s)")

    # (c) with ask_many: questions decoded together (a decoding step reads every weight once for the batch)
    hwm_reset()
    t0 = time.perf_counter()
    answers = index.ask_many(questions, args.k, max_new_tokens=args.new_tokens, batch_size=args.batch,
                             stop_at_eos=False)
    total = time.perf_counter() - t0
    print(f"(c) ask_many, {len(questions)} questions in batches of {args.batch}: {total:.2f} s, "
          f"{total / len(questions):.3f} s per question ({med['a']['e2e'] / (total / len(questions)):.2f}x (a)'s "
          f"median), first batch's first token after {answers[0].first_token_at - t0:.2f} s, "
          f"peak RSS {hwm_mb():.0f} MB")

    if args.grow:
        grown = replicate(path, path.with_name(path.name + f"-copies{args.grow}"), args.grow)
        for folder in (path, grown):
            out = subprocess.run([sys.executable, __file__, "--only-index", str(folder), "--model", args.model,
                                  "--chunks", str(args.chunks), "--questions", str(args.questions),
                                  "--new-tokens", str(args.new_tokens), "--k", str(args.k),
                                  "--doc-max-length", str(args.doc_max_length), "--compr-rate", str(args.compr_rate)]
                                 + (["--threads", str(args.threads)] if args.threads else []),
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"(c) alone in a fresh process, {r['chunks']} chunks: peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(model + serving copy {r['model_rss_mb']:.0f} MB; peak while loading the index and answering "
                  f"{r['serving_peak_mb']:.0f} MB), load {r['load_s']:.2f} s, median answer {r['median_s']:.3f} s")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
