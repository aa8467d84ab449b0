"""One trainer per run folder (issue 12, defect 6): a second one stops naming the first; a lock left
by a process that is gone, or by a runtime whose heartbeat stopped, is taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic_data import write_run_data
from test_training import KILLPOINT

from clara_lite.train.lock import RunLock, RunLocked, hold

CLI = [sys.executable, "-m", "clara_lite.cli", "train", "--stage", "stage1", "--base", "tiny-random",
       "--doc-max-length", "16", "--compr-rate", "4", "--lora-r", "4", "--top-k", "2", "--max-steps", "6",
       "--batch-size", "2", "--save-steps", "2", "--lr", "1e-3", "--log-steps", "1"]


def _holder(path: Path, **fields) -> dict:
    data = {"host": socket.gethostname(), "pid": 1, "session": "other", "stage": "stage1",
            "since": "2025-01-01T00:00:00", "heartbeat": time.time(), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_trainer_on_the_same_run_stops_naming_the_first(tmp_path):
    data = write_run_data(tmp_path / "data") / "stage1.jsonl"
    run = tmp_path / "run"
    cmd = [*CLI, "--run-dir", str(run), "--data", str(data)]
    # the first one freezes itself (SIGSTOP) as step 2 starts, so it is surely mid-training while the second
    # one starts up, however fast the machine; it goes on once that one has been refused
    first = subprocess.Popen([sys.executable, str(KILLPOINT), str(run / "stage1" / "metrics.jsonl"), "STOP",
                              *cmd[3:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while _state(first.pid) != "T":
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() else ""
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    first.send_signal(signal.SIGCONT)
    out = second.stdout + second.stderr
    assert second.returncode == RunLocked.exit_status == 5 and "Traceback" not in out, out
    assert f"is in use by process {first.pid} on this machine training stage1" in out
    assert f"kill {first.pid}" in out and "another --run-dir" in out
    rest, _ = first.communicate(timeout=300)
    assert first.returncode == 0, rest
    steps = [json.loads(line)["step"] for line in (run / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step once: the second trainer wrote nothing
    assert not (run / "train.lock").exists()  # released at the end


def test_stale_locks_are_taken_over_and_live_ones_refused(tmp_path, caplog):
    path = tmp_path / "run" / "train.lock"
    # a process on this machine that is gone (a restarted kernel): taken over at once
    _holder(path, pid=_dead_pid())
    with caplog.at_level(logging.WARNING), hold(path, stage="stage2"):
        assert json.loads(path.read_text())["stage"] == "stage2"
    assert "is gone" in caplog.text and not path.exists()
    # another session's runtime (another host), heartbeat 3 min old: alive, refused with when it goes stale
    _holder(path, host="colab-vm-a", heartbeat=time.time() - 180)
    with pytest.raises(RunLocked, match=r"process 1 on host 'colab-vm-a' \(another session\) training stage1.*"
                                        r"last heartbeat 3 min ago.*stale 10 min after its last heartbeat, in 7 min"):
        RunLock(path).acquire()
    # ... 11 min old: a disconnected runtime, taken over
    _holder(path, host="colab-vm-a", heartbeat=time.time() - 660)
    caplog.clear()
    with caplog.at_level(logging.WARNING), hold(path):
        pass
    assert "last heartbeat is 11 min old (a disconnected runtime)" in caplog.text
    # a live process on this machine (this one): refused
    _holder(path, pid=__import__("os").getpid())
    with pytest.raises(RunLocked, match="on this machine"):
        RunLock(path).acquire()


def test_the_heartbeat_keeps_a_long_step_alive_and_a_takeover_is_reported(tmp_path, caplog):
    path = tmp_path / "run" / "train.lock"
    lock = RunLock(path, heartbeat_s=0.05, stale_s=0.5).acquire()
    try:
        first = json.loads(path.read_text())["heartbeat"]
        time.sleep(0.6)  # longer than stale_s: only the heartbeat keeps others out
        assert json.loads(path.read_text())["heartbeat"] > first
        with pytest.raises(RunLocked):
            RunLock(path, stale_s=0.5).acquire()
        with caplog.at_level(logging.ERROR):
            _holder(path, host="colab-vm-b", session="intruder")
            time.sleep(0.3)
        assert "was taken over by process 1 on colab-vm-b" in caplog.text
    finally:
        lock.release()
    assert path.exists()  # not ours any more: left to its holder


def test_take_over_a_fresh_lock_of_another_host_but_never_of_a_live_process_here(tmp_path, caplog):
    path = tmp_path / "run" / "train.lock"
    _holder(path, host="colab-vm-a", heartbeat=time.time() - 60)  # the runtime before a reconnect
    with pytest.raises(RunLocked, match="run again with --take-over") as refused:
        RunLock(path).acquire()
    err = refused.value
    assert err.holder["host"] == "colab-vm-a" and not err.same_host and not err.alive_here
    assert 530 <= err.stale_in <= 545 and 55 <= err.heartbeat_age <= 70
    with caplog.at_level(logging.WARNING), hold(path, stage="stage2", take_over=True) as lock:
        assert json.loads(path.read_text())["session"] == lock.me["session"]
        assert lock.taken_over["from"]["host"] == "colab-vm-a" and lock.taken_over["by"]["stage"] == "stage2"
        assert "asked to take over" in lock.taken_over["reason"]
    assert "Taking over" in caplog.text and not path.exists()
    # a process alive on this machine (this one): refused even when asked, saying why
    _holder(path, pid=os.getpid())
    with pytest.raises(RunLocked, match="--take-over cannot take a lock from a process alive on this machine") as here:
        RunLock(path, take_over=True).acquire()
    assert here.value.alive_here and here.value.same_host
    assert json.loads(path.read_text())["session"] == "other"  # left alone


def test_the_cli_takes_over_with_the_flag_and_records_it_in_run_json(tmp_path):
    data = write_run_data(tmp_path / "data") / "stage1.jsonl"
    run = tmp_path / "run"
    cmd = [*CLI[:-10], "--max-steps", "2", "--batch-size", "2", "--save-steps", "2", "--lr", "1e-3", "--log-steps", "1",
           "--run-dir", str(run), "--data", str(data)]
    _holder(run / "train.lock", host="colab-vm-a", heartbeat=time.time() - 30)
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    out = refused.stdout + refused.stderr
    assert refused.returncode == RunLocked.exit_status and "--take-over" in out and "Traceback" not in out, out
    done = subprocess.run([*cmd, "--take-over"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((run / "run.json").read_text())
    assert [t["from"]["host"] for t in record["takeovers"]] == ["colab-vm-a"]
    assert (run / "stage1" / "final").is_dir() and not (run / "train.lock").exists()


def test_the_notebook_explains_the_lock_and_takes_over_with_TAKE_OVER(tmp_path, capsys):
    from clara_lite import notebook as nb

    drive = tmp_path / "drive"
    settings = nb.save_settings(drive, nb.Settings(
        run_name="r", base_model="tiny-random", compr_rate=4, doc_max_length=16, lora_r=4, stage1_steps=2,
        save_steps=2, log_steps=1, micro_batch_size=2, grad_accum_steps=1, lr=1e-3))
    ws = nb.Workspace(drive, settings)
    ws.prepare_data("example")
    _holder(ws.layout.lock_file, host="colab-vm-a", heartbeat=time.time() - 120)
    assert ws.train("stage1") is None
    shown = capsys.readouterr().out
    assert "another Colab runtime (host 'colab-vm-a', process 1) training stage1, since 2025-01-01T00:00:00" in shown
    assert "heartbeat) was 2 min ago" in shown and "stale in 8 min" in shown
    assert "set TAKE_OVER = True in the parameters cell" in shown and "Traceback" not in shown
    assert ws.train("stage1", take_over=True) == ws.layout.final("stage1")
    assert [t["from"]["host"] for t in json.loads(ws.layout.run_file.read_text())["takeovers"]] == ["colab-vm-a"]
    # this runtime's own live process: no take-over offered
    _holder(ws.layout.lock_file, pid=os.getpid())
    ws.train("stage2", take_over=True)
    assert "another notebook in this same runtime" in capsys.readouterr().out
