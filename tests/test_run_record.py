"""run.json that survives kills and bad options: a kept copy, the checkpoints' own record, options
checked before anything is written (issue 12, defects 4 and 7; 9: messages and the session record)."""

from __future__ import annotations

import json
import logging
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, TINY_RUN_FLAGS, saved_adapters
from safetensors.torch import load_file, save_file

from clara_lite.cli import main
from clara_lite.core.layout import KIND_CHECKPOINT, verify, write_manifest
from clara_lite.model.stages import get_stage
from clara_lite.serve.export import export_zip
from clara_lite.train.launch import train
from clara_lite.train.record import RunRecord
from clara_lite.train.run import Run, RunError

STEPS = {"max_steps": 3, "micro_batch_size": 2, "save_steps": 1, "keep": 3, "log_steps": 1, "save_minutes": None}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A stage1 run (3 steps, a checkpoint at each, the stage's default learning rate)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(run, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN), train_options=dict(STEPS))
    return run


def _copy(run: Path, tmp_path: Path, *, final: bool = True) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    if not final:
        shutil.rmtree(out / "stage1" / "final")
    return out


def test_a_torn_run_json_is_replaced_by_its_copy_and_named(trained, tmp_path, caplog):
    run = _copy(trained, tmp_path)
    good = json.loads((run / "run.json").read_text())
    assert (run / "run.json.bak").is_file()  # the previous version, kept by the last rewrite
    (run / "run.json").write_bytes(b"")  # kill -9 during the rewrite
    with caplog.at_level(logging.WARNING):
        assert train(run, "stage1", model_options={}, train_options={}) == {"stage1": "already final"}
        assert export_zip(run, out=tmp_path / "x.zip").is_file()
    assert f"{run / 'run.json'} is not valid JSON" in caplog.text and "run.json.bak" in caplog.text
    assert Run(run).record.model.to_dict() == {**good["model"], "trained_stages": []}


def test_kill_9_during_rewrites_never_leaves_an_unreadable_record(tmp_path):
    """A process rewriting run.json in a loop, killed at random moments: a whole record is always read back."""
    root = tmp_path / "run"
    writer = ("import sys; from clara_lite.train.run import Run\n"
              "run = Run(sys.argv[1]); run.record.settings = {'pad': 'x' * 200_000, 'n': 0}\n"
              "print('ready', flush=True)\n"
              "while True:\n    run.record.settings['n'] += 1; run.save()\n")
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(root)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        record = Run(root).record  # never raises: run.json, or the copy when run.json is torn
        assert record.settings["pad"] == "x" * 200_000 and record.settings["n"] >= 1


def test_without_a_readable_record_the_checkpoints_say_what_the_run_was(trained, tmp_path, data_dir, caplog):
    run = _copy(trained, tmp_path, final=False)
    (run / "run.json").write_text('{"format": 1, "model": {')
    (run / "run.json.bak").unlink()
    with caplog.at_level(logging.WARNING):
        record = Run(run).record
    assert "rebuilt from the run's checkpoints" in caplog.text and "clara_config.json" in caplog.text
    assert (record.model.doc_max_length, record.model.compr_rate) == (16, 4)
    assert record.stages["stage1"].train.max_steps == 3  # from the checkpoint's state.json
    # resuming with other model settings is refused, naming the checkpoint's own config file
    with pytest.raises(RunError, match=r"doc_max_length: clara_config.json has 16, this command asks 32") as err:
        train(run, "stage1", data=str(data_dir / "stage1.jsonl"), model_options={"doc_max_length": 32,
                                                                                  "compr_rate": 8},
              train_options={})
    assert "step-000002/model/clara_config.json" in str(err.value)
    done = train(run, "stage1", data=str(data_dir / "stage1.jsonl"), model_options={}, train_options={})
    assert done["stage1"]["steps"] == 3


def test_a_deleted_run_json_does_not_let_other_model_options_through(trained, tmp_path, data_dir):
    run = _copy(trained, tmp_path, final=False)
    (run / "run.json").unlink()
    (run / "run.json.bak").unlink()
    code = main(["train", "--stage", "stage1", "--run-dir", str(run), "--data", str(data_dir / "stage1.jsonl"),
                 *TINY_RUN_FLAGS[:2], "--doc-max-length", "32", "--compr-rate", "8"])
    assert code == 2 and not (run / "run.json").exists()


def test_options_are_checked_before_run_json_is_written(tmp_path, data_dir, caplog):
    cases = {("--lr", "-1"): "lr (--lr) must be a finite number > 0", ("--lora-dropout", "5"): "lora_dropout",
             ("--lora-r", "0"): "lora_r (--lora-r) must be a finite number >= 1", ("--lr", "inf"): "got inf",
             ("--mse-weight", "nan"): "mse_weight (--mse-weight) must be a finite number >= 0, got nan",
             ("--log-steps", "0"): "log_steps", ("--save-steps", "-1"): "save_steps", ("--epochs", "0"): "epochs"}
    for (flag, value), message in cases.items():
        run = tmp_path / f"run{flag}{value}"
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            code = main(["train", "--stage", "stage1", "--run-dir", str(run), "--data",
                         str(data_dir / "stage1.jsonl"), *TINY_RUN_FLAGS, flag, value])
        assert code == 2 and message in caplog.text, (flag, caplog.text)
        assert not run.exists(), flag  # nothing written, so nothing blocks the next attempt
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(["train", "--stage", "stage2", "--run-dir", str(tmp_path / "r2"), "--data",
                     str(data_dir / "stage2.jsonl"), "--init-from", str(tmp_path / "nonexistent"), *TINY_RUN_FLAGS])
    assert code == 2 and "--init-from" in caplog.text and "does not exist" in caplog.text
    assert not (tmp_path / "r2").exists()


def test_a_stage_that_never_trained_a_step_may_change_its_options(tmp_path, data_dir):
    run = Run(tmp_path / "run")  # what a first session writes before it is stopped by a bad row, say
    run.model_config(dict(TINY_RUN))
    run.data_file(get_stage("stage1"), str(data_dir / "stage1.jsonl"), None)
    run.train_config("stage1", {"lr": 0.5, **STEPS}, {})
    run.save()
    result = train(tmp_path / "run", "stage1", data=str(data_dir / "stage1.jsonl"),
                   model_options={"lora_r": 2}, train_options={"lr": 1e-3})
    assert result["stage1"]["steps"] == 3
    record = RunRecord.load(tmp_path / "run" / "run.json")
    assert record.stages["stage1"].train.lr == 1e-3 and record.model.lora_r == 2
    with pytest.raises(RunError, match="lr: run.json has 0.001, this command asks 0.5"):
        train(tmp_path / "run", "stage1", model_options={}, train_options={"lr": 0.5})


def test_messages_name_the_default_rate_a_folder_a_damaged_final_and_another_file(trained, tmp_path, data_dir):
    run = _copy(trained, tmp_path, final=False)
    with pytest.raises(RunError, match=r"lr: run.json has 0.0001 \(stage1's default\), this command asks 0.5"):
        train(run, "stage1", model_options={}, train_options={"lr": 0.5})
    with pytest.raises(RunError, match=r"is a folder, not a file: pass --data .*stage1.jsonl"):
        train(run, "stage1", data=str(data_dir), model_options={}, train_options={})
    other = tmp_path / "other.jsonl"
    other.write_text((data_dir / "stage1.jsonl").read_text().replace("Ada", "Ann"))
    with pytest.raises(RunError, match=r"trained on .*stage1.jsonl .*this command gives another file, .*other.jsonl"):
        train(run, "stage1", data=str(other), model_options={}, train_options={})
    whole = _copy(trained, tmp_path / "b")
    (whole / "stage1" / "final" / "added_tokens.safetensors").write_bytes(b"torn")
    with pytest.raises(RunError, match=r"stage1/final, which is damaged: added_tokens.safetensors has 4 bytes.*"
                                       r"--stage stage1 .*resumes"):
        train(whole, "stage2", data=str(data_dir / "stage2.jsonl"), model_options={}, train_options={})


def test_a_session_with_another_precision_adds_to_the_record(trained, tmp_path, caplog):
    run = _copy(trained, tmp_path, final=False)
    with caplog.at_level(logging.WARNING):  # a T4 session (fp16) after a CPU one: one step left
        train(run, "stage1", model_options={}, train_options={"mixed_precision": "fp16"})
    sessions = Run(run).record.sessions
    assert [(s.step, s.train["mixed_precision"]) for s in sessions] == [(0, "no"), (2, "fp16")]
    assert "mixed precision changes from no to fp16 at step 2" in caplog.text


def test_a_checkpoint_that_matches_its_manifest_but_does_not_fit_falls_back_to_the_older(trained, tmp_path, caplog):
    run = _copy(trained, tmp_path, final=False)
    newest = run / "stage1" / "checkpoints" / "step-000002"
    weights = newest / "model" / "adapters" / "encoder" / "adapter_model.safetensors"
    save_file({k: v.t().contiguous() for k, v in load_file(weights).items()}, weights)  # another shape
    write_manifest(newest, KIND_CHECKPOINT, {"step": 2, "stage": "stage1"})  # ... under a manifest that matches
    assert verify(newest) is None
    with caplog.at_level(logging.INFO):
        assert train(run, "stage1", model_options={}, train_options={})["stage1"]["steps"] == 3
    assert f"Skipping checkpoint {newest}: its manifest matches but it cannot be used" in caplog.text
    assert "another shape" in caplog.text and "step-000001 (step 1/3)" in caplog.text
    got, want = saved_adapters(run / "stage1" / "final"), saved_adapters(trained / "stage1" / "final")
    assert all(torch.equal(got[k], want[k]) for k in want)  # resumed from step 1, exactly
