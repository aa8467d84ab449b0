"""Several processes (DDP through accelerate, gloo on CPU, launched by torchrun as on a multi-GPU
machine) train exactly like one process accumulating the same rows: same weights, same metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_RUN_FLAGS, max_abs_diff, saved_adapters
from synthetic_data import write_run_data

from clara_lite.train.run import Run

MODEL = [*TINY_RUN_FLAGS, "--lora-dropout", "0", "--contrastive-weight", "0.5"]
ARGS = [*MODEL, "--max-steps", "3", "--batch-size", "1", "--lr", "1e-3", "--log-steps", "1", "--save-steps", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(launcher: list[str], run_dir: Path, data: Path, *extra: str) -> str:
    cmd = [*launcher, "-m", "clara_lite.cli", "train", "--stage", "all", "--run-dir", str(run_dir),
           "--data-dir", str(data), *ARGS, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def _metrics(stage_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in rows]


def test_two_processes_train_like_one_process_accumulating_the_same_rows(tmp_path):
    data = write_run_data(tmp_path / "data")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    # 2 processes x 1 row  ==  1 process x 2 micro-batches of 1 row: the same rows in every step
    _train(torchrun, tmp_path / "ddp", data, "--grad-accum", "1")
    _train([sys.executable], tmp_path / "one", data, "--grad-accum", "2")

    ddp, one = Run(tmp_path / "ddp"), Run(tmp_path / "one")
    assert {k: str(v) for k, v in ddp.status().items()} == {s: "final" for s in ("stage1", "stage2", "stage3")}
    assert ddp.status() == one.status()
    for stage in ("stage1", "stage2", "stage3"):
        assert max_abs_diff(saved_adapters(ddp.final_dir(stage)), saved_adapters(one.final_dir(stage))) < 1e-5, stage
        # one writer: a checkpoint at step 2, metrics once per step, equal to the single process's
        assert [p.name for p in (ddp.layout.stage_dir(stage) / "checkpoints").iterdir()] == ["step-000002"]
        m_ddp, m_one = _metrics(ddp.layout.stage_dir(stage)), _metrics(one.layout.stage_dir(stage))
        assert [r["step"] for r in m_ddp] == [1, 2, 3]
        for r_ddp, r_one in zip(m_ddp, m_one, strict=True):
            assert r_ddp.keys() == r_one.keys()
            for key, value in r_one.items():
                assert r_ddp[key] == (pytest.approx(value, rel=1e-5, abs=1e-6) if isinstance(value, float) else value)
    assert "recall_at_1" in _metrics(ddp.layout.stage_dir("stage3"))[0]
    assert len(ddp.record.sessions) == 3  # run.json written by one process, once per stage


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with LOCAL_RANK=rank."""
    import psutil

    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("LOCAL_RANK") == str(rank):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no worker with LOCAL_RANK={rank}")


def test_a_signal_to_one_process_stops_all_after_the_same_step_with_a_checkpoint(tmp_path):
    """Also: without --grad-accum, N processes split the plan's rows per step between them."""
    data = write_run_data(tmp_path / "data")
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "clara_lite.cli", "train", "--stage", "stage1",
           "--run-dir", str(run_dir), "--data-dir", str(data), *MODEL, "--max-steps", "400", "--batch-size", "1",
           "--lr", "1e-3", "--log-steps", "1", "--save-minutes", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "stage1" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
        time.sleep(0.1)
    os.kill(_rank_pid(proc, 1), signal.SIGTERM)  # only the second process hears it
    out, _ = proc.communicate(timeout=240)  # without the vote, rank 0 would wait for rank 1 forever
    assert proc.returncode != 0, out
    assert "stopped by SIGTERM" in out and "stopped by a stop on another process" in out, out
    checkpoints = sorted((run_dir / "stage1" / "checkpoints").iterdir())
    assert len(checkpoints) == 1
    step = int(checkpoints[0].name.split("-")[1])
    assert 2 <= step < 400
    assert not (run_dir / "stage1" / "final").exists()
    # no --grad-accum: the CPU plan's 1 x 16 rows per step are shared by the 2 processes
    assert Run(run_dir).record.stages["stage1"].train.grad_accum_steps == 8
