"""The benchmark scripts run (on the tiny model, in seconds) and print their figures; what they
measure on the real model is read by people, never asserted."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

from conftest import ROOT

from clara_lite.model.data import read_jsonl
from clara_lite.serve import llama_cpp


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _stage1_bench():
    spec = importlib.util.spec_from_file_location("stage1_step", ROOT / "benchmarks" / "stage1_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage1_step_benchmark_interleaves_default_and_reference_in_child_processes():
    out = _run("benchmarks/stage1_step.py", "--model", "tiny-random", "--runs", "1", "--steps", "1", "--threads", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if re.match(r"\| 1 \| (default|reference) ", line)]
    assert [r[1].strip() for r in rows] == ["default", "reference"]
    assert [int(r[2]) for r in rows] == [4, 1]  # the CPU plan's 4 one-row passes vs upstream's one padded batch
    assert re.search(r"default / reference tokens/s per pair: \d+\.\d+x\n", out)
    assert re.search(r"median \d+\.\d+x, spread \d+\.\d+x\.\.\d+\.\d+x over 1 pairs .*\d+\.\d+x peak RSS", out)


def test_reference_step_does_the_same_training_as_the_default_step():
    """With dropout off both variants follow one loss trajectory: only the work differs."""
    bench = _stage1_bench()
    rows = read_jsonl(bench.DATA, "stage1")[:4]
    losses = {}
    for variant in bench.VARIANTS:
        step, _, _ = bench.build_step(variant, "tiny-random", rows, lora_dropout=0.0)
        losses[variant] = [step() for _ in range(4)]
    assert losses["default"][-1] < losses["default"][0]
    assert max(abs(a - b) for a, b in zip(losses["default"], losses["reference"], strict=True)) < 1e-3


def test_load_model_benchmark_prints_both_loads():
    out = _run("benchmarks/load_model.py", "--name", "tiny-random")
    assert re.search(r"tiny-random first load: \d+\.\d+ s", out) and "second load" in out


def test_rag_latency_benchmark_measures_the_three_systems(tmp_path):
    out = _run("benchmarks/rag_latency.py", "--model", "tiny-random", "--chunks", "6", "--questions", "2",
               "--new-tokens", "2", "--doc-max-length", "32", "--compr-rate", "8", "--threads", "1", "--grow", "2",
               "--index-dir", str(tmp_path / "kb"))
    for system in ("(a) text RAG", "(b) query-time compression", "(c) pre-compressed index"):
        assert re.search(re.escape(system) + r"[^|]* \| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d \| \d+ \| \d+ \|", out), system
    if llama_cpp.available():  # llama.cpp text RAG from the embedded model's own GGUF, beside them
        assert re.search(r"\(d\) text RAG, llama.cpp Q4_1 \| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d \|", out)
        assert re.search(r"\(c\) vs \(d\) llama.cpp text RAG: \d+\.\d+x end to end", out)
    assert re.search(r"index build: \d+\.\d+ s", out) and re.search(r"index load: \d+\.\d+ s", out)
    assert re.search(r"index bytes per chunk: \d+", out) and "load average at start" in out
    assert re.search(r"\(c\) ask_many, 2 questions in batches of 10: \d+\.\d+ s", out)
    sizes = [int(n) for n in re.findall(r"\(c\) alone in a fresh process, (\d+) chunks", out)]
    assert len(sizes) == 2 and sizes[1] == 2 * sizes[0]  # the grown corpus is twice the index


def test_real_text_benchmark_trains_two_stages_and_compares_the_systems_on_held_out_rows(tmp_path):
    import json

    rows = [{"data_type": "qa", "question": [f"Where does person {i} live?", f"What is person {i}'s job?"],
             "answers": [f"Town {i}", f"Job {i}"], "docs": [f"Person {i} lives in Town {i} and works as Job {i}."]}
            for i in range(6)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    # the distillation recipe: real_text.yaml with stage2's targets the teacher's (so the teacher pass runs too)
    out = _run("benchmarks/real_text.py", "--recipe", "real_text_distill", "--run-dir", str(run), "--data", str(data),
               "--base", "tiny-random", "--train-rows", "4", "--heldout-rows", "2", "--stage1-steps", "1", "--stage2-steps", "1",
               "--grad-accum", "1", "--questions-per-doc", "1", "--doc-max-length", "32", "--compr-rate", "4",
               "--max-new-tokens", "2", "--threads", "1")
    table = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    # the systems, then the share of text RAG's gain CLaRa recovers and the differences, with intervals
    assert table == ["system", "closed-book", "text-rag", "clara", "clara-zeroed", "metric", "F1", "cover-EM", "EM"]
    report = json.loads((run / "compare" / "comparison.json").read_text())
    assert report["count"] == 2  # one question for each held-out document, none of them trained on
    assert set(report["recovery"]["f1"]) == {"share", "over_closed_book", "over_zeroed"}
    curve = json.loads((run / "compare" / "learning_curve.json").read_text())
    # scored after each stage's one step, on the same 2 questions: 1 document, then 1 + 1 question's document
    assert [(p["stage"], p["documents"]) for p in curve["points"]] == [("stage1", 1), ("stage2", 2)]
    assert curve["questions"] == 2 and set(curve["final"]) == {"closed-book", "text-rag", "clara", "clara-zeroed"}
    held = {r["docs"][0] for r in map(json.loads, (run / "data" / "heldout.jsonl").read_text().splitlines())}
    trained = {d for r in map(json.loads, (run / "data" / "stage1.jsonl").read_text().splitlines()) for d in r["docs"]}
    assert held and not held & trained
    for path in ("compare/comparison.png", "compare/learning_curve.png", "compare/timing.json", "stage1/loss.png", "stage2/loss.png"):
        assert (run / path).is_file(), path
    teacher = (run / "teacher_answers.jsonl").read_text().splitlines()
    assert len(teacher) == 1 and re.search(r"^teacher +\S+teacher_answers\.jsonl$", out, re.M)  # 1 step x 1 row
    probe = _run("benchmarks/memory_probe.py", "--run-dir", str(run), "--limit", "2")
    losses = dict(re.findall(r"^  (own document|another document|zeroed) +(\d+\.\d+)$", probe, re.M))
    assert len(losses) == 3 and "over 2 questions" in probe


def test_serve_concurrency_benchmark_drives_the_servers_interleaved(tmp_path):
    out = _run("benchmarks/serve_concurrency.py", "--model", "tiny-random", "--chunks", "6", "--clients", "1,2",
               "--requests", "1", "--new-tokens", "2", "--doc-max-length", "32", "--compr-rate", "8",
               "--retriever", "bm25", "--threads", "1", "--max-batch", "4", "--index-dir", str(tmp_path / "kb"))
    rows = re.findall(r"^\| (\d+) \| (batched \(max 4\)|one at a time|text RAG, llama.cpp Q4_1) \| (\d+) \| \d+\.\d+ "
                      r"\| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d+ \|$", out, re.M)
    # text RAG in llama.cpp (the embedded model's GGUF) beside them when llama-cpp-python is installed
    servers = ["batched (max 4)", "one at a time"] + (["text RAG, llama.cpp Q4_1"] if llama_cpp.available() else [])
    assert [(c, s, int(n)) for c, s, n in rows] == [(c, s, int(c)) for c in ("1", "2") for s in servers]
    assert re.search(r"at 2 clients: batched / one-at-a-time throughput \d+\.\d+x; batched p95 / single request "
                     r"\d+\.\d+x", out) and "load average at start" in out
