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
