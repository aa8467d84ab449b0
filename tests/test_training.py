"""The runner: exact resume after SIGKILL, trusted checkpoints, stage chaining, faults, AMP paths."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, TINY_RUN_FLAGS, max_abs_diff, saved_adapters, tiny_model

from clara_lite.core.config import TrainConfig
from clara_lite.model.data import read_jsonl
from clara_lite.model.stages import get_stage
from clara_lite.train.launch import train
from clara_lite.train.run import RunError
from clara_lite.train.trainer import train_stage

KILLPOINT = Path(__file__).with_name("killpoint.py")
TRAIN = {"max_steps": 6, "micro_batch_size": 2, "grad_accum_steps": 2, "save_steps": 2, "lr": 1e-3, "log_steps": 1}
CLI_TRAIN = ["--max-steps", "6", "--batch-size", "2", "--grad-accum", "2", "--save-steps", "2", "--lr", "1e-3",
             "--log-steps", "1"]


def _cli(run_dir: Path, data: Path, *extra: str, launcher: tuple[str, ...] = ("-m", "clara_lite.cli")
         ) -> subprocess.Popen:
    cmd = [sys.executable, *launcher, "train", "--stage", "stage1", "--run-dir", str(run_dir),
           "--data", str(data), *TINY_RUN_FLAGS, *CLI_TRAIN, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _signal_after(step: int, run_dir: Path, data_dir: Path, sig: str) -> tuple[int, str]:
    """Run stage1 from the CLI (6 steps); it gets ``sig`` (KILL, TERM) as step ``step + 1`` starts, i.e. right
    after its checkpoint of ``step`` is complete (see killpoint.py: exact, no race with the run finishing)."""
    manifest = run_dir / "stage1" / "checkpoints" / f"step-{step:06d}" / "manifest.json"
    proc = _cli(run_dir, data_dir / "stage1.jsonl", launcher=(str(KILLPOINT), str(manifest), sig))
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _diff_to_reference(run_dir: Path, reference: Path) -> float:
    """Largest weight difference between this run's stage1 final and the uninterrupted reference's."""
    return max_abs_diff(saved_adapters(run_dir / "stage1" / "final"), saved_adapters(reference / "stage1" / "final"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted stage1 run: the adapters every resumed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    train(run_dir, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN),
          train_options=dict(TRAIN))
    return run_dir


def test_uninterrupted_run_writes_the_run_folder(reference):
    stage = reference / "stage1"
    assert (reference / "run.json").is_file() and (stage / "final" / "manifest.json").is_file()
    assert (stage / "loss.png").stat().st_size > 1000
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_sigkill_after_second_checkpoint_then_rerun_is_exact(tmp_path, data_dir, reference):
    run_dir = tmp_path / "run"
    code, out = _signal_after(4, run_dir, data_dir, "KILL")
    assert code == -signal.SIGKILL, out
    assert not (run_dir / "stage1" / "final").exists()
    assert sorted(p.name for p in (run_dir / "stage1" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    again = _cli(run_dir, data_dir / "stage1.jsonl")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "Resuming stage1" in out and "step 4/6" in out
    assert _diff_to_reference(run_dir, reference) <= 1e-6
    steps = [line for line in (run_dir / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 6  # each step logged once across the two processes


def test_sigterm_checkpoints_and_a_broken_checkpoint_is_skipped(tmp_path, data_dir, reference, caplog):
    run_dir = tmp_path / "run"
    code, out = _signal_after(2, run_dir, data_dir, "TERM")  # stopped during step 3
    assert code == 130, out
    cks = sorted((run_dir / "stage1" / "checkpoints").iterdir())
    assert len(cks) >= 2 and not (run_dir / "stage1" / "final").exists()
    assert "stopped by SIGTERM" in out
    newest = cks[-1]
    weights = newest / "model" / "adapters" / "encoder" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a Drive hiccup
    with caplog.at_level(logging.WARNING):
        train(run_dir, "stage1", model_options={}, train_options={})
    assert any("Skipping checkpoint" in r.message and newest.name in r.message for r in caplog.records)
    assert _diff_to_reference(run_dir, reference) <= 1e-6


def test_missing_manifest_is_skipped(tmp_path, data_dir, reference):
    run_dir = tmp_path / "run"
    code, out = _signal_after(4, run_dir, data_dir, "KILL")
    assert code == -signal.SIGKILL, out
    (run_dir / "stage1" / "checkpoints" / "step-000004" / "manifest.json").unlink()
    train(run_dir, "stage1", model_options={}, train_options={})
    assert _diff_to_reference(run_dir, reference) <= 1e-6


def test_write_failure_does_not_stop_training(tmp_path, data_dir, monkeypatch):
    real_fsync = os.fsync
    failing = {"on": False, "calls": 0}

    def fsync(fd):
        if failing["on"]:
            failing["calls"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    model = tiny_model(**{k: v for k, v in TINY_RUN.items() if k != "base_model"})
    stage = get_stage("stage1")
    rows = read_jsonl(data_dir / "stage1.jsonl", "stage1")
    cfg = TrainConfig(max_steps=4, micro_batch_size=2, save_steps=1, lr=1e-3, retry_attempts=2, retry_delay_s=0.01,
                      keep=5, log_steps=1)
    checkpoints = tmp_path / "stage1" / "checkpoints"
    from clara_lite.train import checkpoint as ckpt

    real_save = ckpt.save_checkpoint

    def save(folder, *args, **kwargs):  # make exactly the step-2 save hit a full disk
        failing["on"] = folder.name == "step-000002"
        try:
            return real_save(folder, *args, **kwargs)
        finally:
            failing["on"] = False

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    summary = train_stage(model, stage, rows, tmp_path / "stage1", cfg)
    assert summary["steps"] == 4 and failing["calls"] >= 2
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["step-000001", "step-000003"]
    assert ckpt.verify(checkpoints / "step-000001") is None
    assert ckpt.verify(tmp_path / "stage1" / "final") is None


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_paths_run_on_cpu(tmp_path, data_dir, precision):
    model = tiny_model(**{k: v for k, v in TINY_RUN.items() if k != "base_model"})
    rows = read_jsonl(data_dir / "stage1.jsonl", "stage1")
    cfg = TrainConfig(max_steps=3, micro_batch_size=2, lr=1e-3, mixed_precision=precision, log_steps=1,
                      save_minutes=None)
    train_stage(model, get_stage("stage1"), rows, tmp_path, cfg)
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    lora = [p for n, p in model.lm.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float32 for p in lora)  # trainable weights stay fp32 under AMP
    if precision == "fp16":
        state = json.loads((tmp_path / "final" / "summary.json").read_text())
        assert state["steps"] == 3


def test_stage_order_and_conflicts_are_clear_errors(tmp_path, data_dir, reference):
    with pytest.raises(RunError, match=r"stage2 starts from stage1/final.*not started.*--stage stage1"):
        train(tmp_path / "fresh", "stage2", data=str(data_dir / "stage2.jsonl"), model_options=dict(TINY_RUN),
              train_options=dict(TRAIN))
    with pytest.raises(RunError, match=r"lr: run.json has 0.001, this command asks 0.5"):
        train(reference, "stage1", model_options={}, train_options={"lr": 0.5})
    with pytest.raises(RunError, match=r"compr_rate: run.json has 4"):
        train(reference, "stage1", model_options={"compr_rate": 8}, train_options={})
    assert train(reference, "stage1", model_options={}, train_options={}) == {"stage1": "already final"}


def test_stage_all_resumes_stage2_then_runs_stage3(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    opts = dict(max_steps=4, micro_batch_size=2, save_steps=2, lr=1e-3, log_steps=1)
    train(run_dir, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN),
          train_options={**opts, "max_steps": 2})
    step2 = run_dir / "stage2" / "checkpoints" / "step-000002" / "manifest.json"
    cmd = [sys.executable, str(KILLPOINT), str(step2), "KILL", "train", "--stage", "stage2", "--run-dir",
           str(run_dir), "--data", str(data_dir / "stage2.jsonl"), "--max-steps", "4", "--batch-size", "2",
           "--save-steps", "2", "--lr", "1e-3", "--log-steps", "1"]
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # SIGKILL as step 3 starts
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    results = train(run_dir, "all", data_dir=str(data_dir), model_options={},
                    train_options={"max_steps": 4, "micro_batch_size": 2, "lr": 1e-3})
    assert results["stage1"] == "already final"
    assert results["stage2"]["steps"] == 4 and results["stage3"]["steps"] == 4
    metrics = (run_dir / "stage2" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 4
    final3 = run_dir / "stage3" / "final"
    assert (final3 / "adapters" / "query_reasoner" / "adapter_model.safetensors").is_file()
    import json

    assert json.loads((final3 / "clara_config.json").read_text())["trained_stages"] == ["stage1", "stage2", "stage3"]


def test_qlora_habits_8bit_adamw_resumes_exactly_and_target_modules_choose_the_layers(tmp_path, data_dir):
    """--optim adamw_8bit (bitsandbytes: its quantization state is nested in the optimizer state) survives a
    kill and resume bit for bit; --lora-target-modules q_proj v_proj adapts only those layers."""
    reference = tmp_path / "reference"
    train(reference, "stage1", data=str(data_dir / "stage1.jsonl"),
          model_options={**TINY_RUN, "lora_target_modules": ["q_proj", "v_proj"]},
          train_options={**TRAIN, "optim": "adamw_8bit"})
    adapters = saved_adapters(reference / "stage1" / "final")
    assert adapters and all(".q_proj." in k or ".v_proj." in k for k in adapters)
    newest = sorted((reference / "stage1" / "checkpoints").glob("step-*"))[-1]
    meta = json.loads((newest / "optimizer.json").read_text())
    assert "__bnb_optimizer_quant_state__" in json.dumps(meta)  # the 8-bit states, checkpointed

    run_dir = tmp_path / "run"
    extra = ("--optim", "adamw_8bit", "--lora-target-modules", "q_proj", "v_proj")
    manifest = run_dir / "stage1" / "checkpoints" / "step-000004" / "manifest.json"
    proc = _cli(run_dir, data_dir / "stage1.jsonl", *extra, launcher=(str(KILLPOINT), str(manifest), "KILL"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, out
    again = _cli(run_dir, data_dir / "stage1.jsonl", *extra)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "Resuming stage1" in out, out
    assert _diff_to_reference(run_dir, reference) == 0.0
