"""The benchmark scripts run (on the tiny model, in seconds) and print their figures; what they
measure on the real model is read by people, never asserted."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_stage1_step_benchmark_runs_the_runner_step_on_the_cpu_plan():
    out = _run("benchmarks/stage1_step.py", "--model", "tiny-random", "--steps", "1", "--compress-runs", "1",
               "--threads", "1")
    assert "micro-batches of 1 row(s)" in out  # the CPU plan's cut
    # one row per pass: no encoder/decoder padding at all, and the upstream batch's real token counts
    assert "encoder tokens: 607 real, padded 607 (1x170 + 1x168 + 1x193 + 1x76)" in out
    assert "decoder tokens: 1445 real, padded 1445" in out
    for figure in ("seconds/step: ", "tokens/s (real enc+dec): ", "peak RSS: "):
        assert re.search(re.escape(figure) + r"\d+\.\d+", out), figure


def test_load_model_benchmark_prints_both_loads():
    out = _run("benchmarks/load_model.py", "--name", "tiny-random")
    assert re.search(r"tiny-random first load: \d+\.\d+ s", out) and "second load" in out


def test_rag_latency_benchmark_measures_the_three_systems(tmp_path):
    out = _run("benchmarks/rag_latency.py", "--model", "tiny-random", "--chunks", "6", "--questions", "2",
               "--new-tokens", "2", "--doc-max-length", "32", "--compr-rate", "8", "--threads", "1", "--grow", "2",
               "--index-dir", str(tmp_path / "kb"))
    for system in ("(a) text RAG", "(b) query-time compression", "(c) pre-compressed index"):
        assert re.search(re.escape(system) + r" \| \d+\.\d+ \| \d+\.\d+ \| \d+ \| \d+ \|", out), system
    assert re.search(r"index build: \d+\.\d+ s", out) and re.search(r"index load: \d+\.\d+ s", out)
    assert re.search(r"index bytes per chunk: \d+", out) and "load average at start" in out
    assert re.search(r"\(c\) ask_many, 2 questions in batches of 10: \d+\.\d+ s", out)
    sizes = [int(n) for n in re.findall(r"\(c\) alone in a fresh process, (\d+) chunks", out)]
    assert len(sizes) == 2 and sizes[1] == 2 * sizes[0]  # the grown corpus is twice the index
