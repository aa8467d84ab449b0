"""A full disk never costs a checkpoint: real small tmpfs run folders (issue 12, defect 1 and the
fault-injection acceptance test).

The disk really is full in these tests (a tmpfs mount, filled with a ballast file): every writer the
runner uses meets a genuine ENOSPC, reported its own way (OSError, tokenizers' bare Exception,
SafetensorError). The random test fills the disk just before a chosen write of each kind (weights,
tokenizer, JSON, metrics, manifest) and gives the space back after a random number of the runner's
back-off sleeps, or never.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, TINY_RUN_FLAGS, saved_adapters

from clara_lite.core.layout import verify
from clara_lite.train.checkpoint import complete_checkpoints
from clara_lite.train.launch import ALREADY_FINAL, train

TRAIN = {"max_steps": 3, "micro_batch_size": 2, "grad_accum_steps": 1, "save_steps": 1, "lr": 1e-3, "log_steps": 1,
         "keep": 2, "save_minutes": None, "retry_attempts": 3, "retry_delay_s": 0.001}
CLI = [*TINY_RUN_FLAGS,
       "--max-steps", "3", "--batch-size", "2", "--grad-accum", "1", "--save-steps", "1", "--lr", "1e-3",
       "--log-steps", "1", "--keep", "2", "--retry-attempts", "3", "--retry-delay-s", "0.001"]
MB = 1 << 20


def _mount(folder: Path, size_mb: int, remount: bool = False) -> None:
    opts = f"{'remount,' if remount else ''}size={size_mb}M"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {proc.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(folder: Path, size_mb: int):
    folder.mkdir(parents=True, exist_ok=True)
    _mount(folder, size_mb)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def fill(folder: Path, leave: int) -> Path:
    """A ballast file taking all but ``leave`` bytes of the mount."""
    ballast = folder / "ballast"
    size = free(folder) - leave
    if size > 0:
        fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    return ballast


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> dict:
    """The adapters of an uninterrupted run on an ordinary disk."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(run, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN), train_options=dict(TRAIN))
    return saved_adapters(run / "stage1" / "final")


def _bit_equal(final: Path, reference: dict) -> bool:
    got = saved_adapters(final)
    return got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


def _steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "stage1" / "metrics.jsonl").read_text().splitlines()]


def test_full_disk_stops_with_the_space_needed_and_the_checkpoint_intact(tmp_path, data_dir, reference):
    """The issue's reproduction: a small tmpfs as --run-dir. One checkpoint fits, the second and the
    final do not: the second is retried and cleaned away, training goes on, the final stops the run
    with one message; after space is freed the same command finishes bit-equal."""
    with tmpfs(tmp_path / "disk", 6) as disk:
        run = disk / "run"
        cmd = [sys.executable, "-m", "clara_lite.cli", "train", "--stage", "stage1", "--run-dir", str(run),
               "--data", str(data_dir / "stage1.jsonl"), *CLI]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "Traceback" not in out, out
        errors = [line for line in out.splitlines() if " ERROR " in line]
        assert f"could not write {run / 'stage1' / 'final'}: a save there needs about 3." in errors[-1], errors
        assert "MB free now" in errors[-1] and "step-000001, is intact" in errors[-1]
        assert "Checkpoint write failed (attempt 3/3): [Errno 28] No space left on device" in out
        names = sorted(p.name for p in (run / "stage1" / "checkpoints").iterdir())
        assert names == ["step-000001"] and not (run / "stage1" / "final").exists()  # partials removed
        assert verify(run / "stage1" / "checkpoints" / "step-000001") is None
        assert _steps_logged(run) == [1, 2, 3]  # metrics appends fit: nothing to lose there

        _mount(disk, 16, remount=True)  # space is back
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        assert _bit_equal(run / "stage1" / "final", reference)
        assert _steps_logged(run) == [1, 2, 3]


def test_space_that_comes_back_during_the_back_off_is_used(tmp_path, data_dir, reference, caplog):
    with tmpfs(tmp_path / "disk", 16) as disk:
        run = disk / "run"
        ballast: list[Path] = []

        class FreeOnFirstFailure(logging.Handler):  # someone empties Drive's bin while the runner waits
            def emit(self, record):
                if "Checkpoint write failed" in record.getMessage() and ballast:
                    ballast.pop().unlink()

        class FillBeforeStep2(logging.Handler):
            def emit(self, record):
                if record.getMessage().startswith("Checkpoint ") and record.getMessage().endswith("step-000001 saved"):
                    ballast.append(fill(disk, 64 * 1024))

        handlers = [FreeOnFirstFailure(), FillBeforeStep2()]
        for h in handlers:
            logging.getLogger("clara_lite").addHandler(h)
        try:
            with caplog.at_level(logging.INFO):
                summary = train(run, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN),
                                train_options=dict(TRAIN))
        finally:
            for h in handlers:
                logging.getLogger("clara_lite").removeHandler(h)
    assert summary["stage1"]["steps"] == 3
    assert "Checkpoint write failed (attempt 1/3)" in caplog.text and "attempt 2/3" not in caplog.text
    assert "step-000002 saved" in caplog.text


# --------------------------------------------------------------------------- random fault injection

# (kind, names whose opening for writing is the moment to fill the disk, bytes left free then)
KINDS = [
    ("weights", ("adapter_config.json",), 8 * 1024),  # the config fits, adapter_model.safetensors does not
    ("tokenizer", ("tokenizer_config.json",), 64 * 1024),  # small files fit, tokenizer.json (3.5 MB) does not
    ("json", ("clara_config.json", "optimizer.json", "state.json", "summary.json", "run.json", "run.json.bak"), 0),
    ("metrics", ("metrics.jsonl",), 0),
    ("manifest", ("manifest.json",), 0),
]


class Injector:
    """Fills ``disk`` when the ``nth`` file named in ``names`` is opened for writing under it; frees
    it again at the runner's ``release``-th back-off sleep (None: never). Driven by Python's audit
    events (``open``, ``time.sleep``): nothing of the runner is replaced."""

    active: Injector | None = None

    def __init__(self, disk: Path, names, nth: int, leave: int, release: int | None):
        self.disk, self.names, self.nth, self.leave, self.release = disk, names, nth, leave, release
        self.seen, self.sleeps, self.ballast, self.fired, self.busy = 0, 0, None, None, False

    @staticmethod
    def hook(event, args):
        self = Injector.active
        if self is None or self.busy:
            return
        self.busy = True
        try:
            if event == "open" and self.fired is None and isinstance(args[1], str) and ("w" in args[1] or
                                                                                         "a" in args[1]):
                path = Path(os.fsdecode(args[0])) if isinstance(args[0], (str, bytes)) else None
                if path is not None and path.name in self.names and self.disk in path.parents:
                    self.seen += 1
                    if self.seen == self.nth:
                        self.fired = str(path.relative_to(self.disk))
                        if "w" in args[1] and path.is_file():  # what the open does first: else its
                            os.truncate(path, 0)  # rewrite would reuse the blocks it frees
                        self.ballast = fill(self.disk, self.leave)
            elif event == "time.sleep" and self.ballast is not None:
                self.sleeps += 1
                if self.release is not None and self.sleeps >= self.release:
                    self.ballast.unlink()
                    self.ballast = None
        finally:
            self.busy = False


sys.addaudithook(Injector.hook)  # inert unless a test sets Injector.active

# which opening of each kind's files may be the one: they happen this often in one run of TRAIN (2 step
# checkpoints and a final; run.json twice and its copy once). Only the first append to metrics.jsonl
# needs new space: the next rows fit in the block its first row started.
OCCURRENCES = {"weights": 6, "tokenizer": 3, "json": 11, "metrics": 1, "manifest": 3}
ITERATIONS = 10


class Saves(logging.Handler):
    """The checkpoints the runner reported complete, in order."""

    def __init__(self):
        super().__init__()
        self.saved: list[str] = []

    def emit(self, record):
        if record.getMessage().startswith("Checkpoint ") and record.getMessage().endswith(" saved"):
            self.saved.append(record.getMessage().split()[1])


def test_random_write_faults_never_lose_the_newest_checkpoint(tmp_path, data_dir, reference, caplog):
    rng = random.Random(12)
    tried = handled = 0
    fired = {kind: 0 for kind, _, _ in KINDS}
    started = time.monotonic()
    with tmpfs(tmp_path / "disk", 24) as disk:
        for i in range(ITERATIONS):
            kind, names, leave = KINDS[i % len(KINDS)]
            nth = rng.randint(1, OCCURRENCES[kind])
            release = rng.choice([1, 2, None])
            run = disk / f"run{i}"
            injector = Injector(disk, names, nth, leave, release)
            handler = Saves()
            logging.getLogger("clara_lite").addHandler(handler)
            caplog.clear()
            Injector.active = injector
            outcome = "finished"
            try:
                with caplog.at_level(logging.INFO):
                    train(run, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN),
                          train_options=dict(TRAIN))
            except OSError as err:  # a clean stop: the one message, naming the file and what to do
                outcome = "stopped"
                assert "could not write" in str(err) and "run the same command again" in str(err), str(err)
            finally:
                Injector.active = None
                logging.getLogger("clara_lite").removeHandler(handler)
                if injector.ballast is not None:
                    injector.ballast.unlink()
            tried += 1
            assert injector.fired, f"iteration {i}: no {kind} write #{nth} happened"
            fired[kind] += 1
            failures = [r for r in caplog.records if "write failed" in r.getMessage()
                        or "Could not append" in r.getMessage() or "could not write" in r.getMessage()]
            assert failures or outcome == "stopped", f"iteration {i}: the full disk went unnoticed ({injector.fired})"
            # the newest checkpoint that was complete is still complete; nothing half-written is left
            folders = sorted((run / "stage1" / "checkpoints").glob("step-*")) if (run / "stage1").is_dir() else []
            if handler.saved:
                assert verify(Path(handler.saved[-1])) is None, f"iteration {i}: lost {handler.saved[-1]}"
            assert len(complete_checkpoints(run / "stage1" / "checkpoints")) == len(folders), folders
            if outcome == "stopped" or not (run / "stage1" / "final").is_dir():
                result = train(run, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN),
                               train_options=dict(TRAIN))
                assert result["stage1"] == ALREADY_FINAL or result["stage1"]["steps"] == 3
            assert _bit_equal(run / "stage1" / "final", reference), f"iteration {i}: {kind} at {injector.fired}"
            assert _steps_logged(run) == [1, 2, 3], f"iteration {i}: {_steps_logged(run)}"
            handled += 1
            shutil.rmtree(run)
    elapsed = time.monotonic() - started
    print(f"\nfault injection: {handled}/{tried} runs handled in {elapsed:.1f} s; faults by kind: {fired}")
    assert handled == tried == ITERATIONS and all(fired.values())
