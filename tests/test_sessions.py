"""Every session is planned for the device at hand: simulated CPU -> T4 -> A100 sessions of one stage,
rows per step fixed by run.json, each session's choices in run.json; running out of memory splits the
step (the same update) or names the next options.

Devices are simulated through ``train(device=DeviceInfo(...))`` (the plan is a pure function of the
device); the training itself runs on this CPU in the planned dtype and precision. Stops and
out-of-memory errors are injected with PyTorch's global module hooks, not by patching clara_lite."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal

import pytest
import torch
from helpers import max_abs_diff, saved_adapters

from clara_lite.core.hardware import DeviceInfo
from clara_lite.model.data import QAExample, read_jsonl
from clara_lite.model.modeling import ClaraModel
from clara_lite.model.stages import get_stage
from clara_lite.serve.export import model_card
from clara_lite.train.launch import train
from clara_lite.train.plan import plan_session, split_rows, tokens_per_row
from clara_lite.train.run import Run, RunError
from clara_lite.train.trainer import OutOfMemory, TrainingInterrupted

CPU = DeviceInfo("cpu", "x86_64")
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), total_mem_gb=15.83, free_mem_gb=15.1, count=1)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), total_mem_gb=42.5, free_mem_gb=42.0, count=1)
MODEL = {"base_model": "tiny-random", "doc_max_length": 16, "compr_rate": 4, "lora_r": 4, "generation_top_k": 2,
         "lora_dropout": 0.0}
TRAIN = {"max_steps": 6, "rows_per_step": 4, "save_steps": 1, "lr": 1e-3, "log_steps": 1}


@contextlib.contextmanager
def on_micro_batch(action):
    """Call ``action(n)`` before the n-th forward of any ClaraModel (one per micro-batch), n from 1."""
    count = [0]

    def hook(module, args):
        if isinstance(module, ClaraModel):
            count[0] += 1
            action(count[0], args)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def sigterm_at(n: int):
    """A stop request (what Colab sends a runtime it takes away) during the n-th micro-batch."""
    def action(i, _args):
        if i == n:
            os.kill(os.getpid(), signal.SIGTERM)
    return action


def rows_of(args) -> int:
    batch = args[0]
    return len(batch["dec"]["input_ids"])


def test_cpu_then_t4_then_a100_each_planned_for_itself(tmp_path, data_dir, caplog):
    run_dir, data = tmp_path / "run", str(data_dir / "stage1.jsonl")
    caplog.set_level(logging.WARNING, logger="clara_lite")
    # session 1 on a CPU: 1 row per pass x 4; stopped during step 3 (after its 9th micro-batch)
    with on_micro_batch(sigterm_at(9)), pytest.raises(TrainingInterrupted, match="step 3/6"):
        train(run_dir, "stage1", data=data, model_options=dict(MODEL), train_options=dict(TRAIN), device=CPU)
    # session 2 on a T4: fp16 with a scaler, the 4 rows of a step in one pass; stopped during step 5
    with on_micro_batch(sigterm_at(2)), pytest.raises(TrainingInterrupted, match="step 5/6"):
        train(run_dir, "stage1", model_options={}, train_options={}, device=T4)
    # session 3 on an A100: bf16; finishes
    train(run_dir, "stage1", model_options={}, train_options={}, device=A100)

    record = json.loads((run_dir / "run.json").read_text())
    sessions = record["sessions"]
    assert [s["hardware"]["device"]["name"] for s in sessions] == ["x86_64", "Tesla T4", "NVIDIA A100-SXM4-40GB"]
    got = [{k: s["training"][k] for k in ("dtype", "mixed_precision", "micro_batch_size", "grad_accum_steps",
                                          "rows_per_step", "quantization", "attn_implementation")}
           for s in sessions]
    assert got == [
        {"dtype": "float32", "mixed_precision": "no", "micro_batch_size": 1, "grad_accum_steps": 4,
         "rows_per_step": 4, "quantization": "none", "attn_implementation": "sdpa"},
        {"dtype": "float16", "mixed_precision": "fp16", "micro_batch_size": 4, "grad_accum_steps": 1,
         "rows_per_step": 4, "quantization": "none", "attn_implementation": "sdpa"},
        {"dtype": "bfloat16", "mixed_precision": "bf16", "micro_batch_size": 4, "grad_accum_steps": 1,
         "rows_per_step": 4, "quantization": "none", "attn_implementation": "sdpa"},
    ]
    assert record["stages"]["stage1"]["train"]["rows_per_step"] == 4
    # numerics changes are warnings, recorded with the session that made them
    assert sessions[0]["training"]["notes"] == []
    assert any("mixed precision no -> fp16 with a GradScaler" in n for n in sessions[1]["training"]["notes"])
    assert any("mixed precision fp16 -> bf16" in n for n in sessions[2]["training"]["notes"])
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("numerics change: mixed precision no -> fp16" in m for m in warned)
    # every step once, in order, across three sessions; the stage is final
    steps = [json.loads(line)["step"] for line in (run_dir / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert Run(run_dir).is_final("stage1")
    # the model card lists each session with what it ran
    card = model_card(Run(run_dir), "stage1", "x.zip")
    assert "cpu x86_64; float32, mixed precision no, attention sdpa, base none, 1 x 4 = 4 rows per step" in card
    assert "Tesla T4, 15.83 GB; float16, mixed precision fp16, attention sdpa, base none, 4 x 1 = 4 rows" in card
    assert "A100-SXM4-40GB, 42.5 GB; bfloat16, mixed precision bf16, attention sdpa" in card


def test_later_stages_find_their_data_beside_the_first_ones(tmp_path, data_dir, capsys):
    from clara_lite.cli import main

    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir), "--max-steps", "1", "--base", "tiny-random", "--doc-max-length",
            "16", "--compr-rate", "4", "--lora-r", "4", "--top-k", "2"]
    assert main([*args, "--stage", "stage1", "--data-dir", str(data_dir)]) == 0
    assert main([*args[:5], "--stage", "stage2"]) == 0  # no --data, no --data-dir
    record = json.loads((run_dir / "run.json").read_text())
    assert record["stages"]["stage2"]["data"]["path"] == str((data_dir / "stage2.jsonl").resolve())


def test_7b_plans_4bit_on_a_t4_only_and_says_so(tmp_path, data_dir):
    """The plan alone (no 7B model loads here): CPU full, T4 4-bit with checkpointing, A100 full again."""
    run = Run(tmp_path / "run")
    stage = get_stage("stage2")
    config = run.model_config({**MODEL, "doc_max_length": 256, "compr_rate": 32, "generation_top_k": 4})
    run.data_file(stage, str(data_dir / "stage2.jsonl"), None)
    examples = read_jsonl(data_dir / "stage2.jsonl", stage)
    plans = []
    for device in (CPU, T4, A100):
        p = plan_session(run, stage, examples, config, {}, base="mistral-7b", device=device, params_b=7.24)
        run.train_config(stage.name, {}, p.train_values())
        run.record_session(stage.name, p.profile, {}, p.record())
        plans.append(p)
    assert [p.quantization for p in plans] == [None, "4bit", None]
    assert [p.rows_per_step for p in plans] == [16, 16, 16]
    assert plans[1].gradient_checkpointing and plans[1].micro_batch_size * plans[1].grad_accum_steps == 16
    assert any("base weights full precision -> 4-bit nf4" in n for n in plans[1].notes)
    assert any("base weights 4-bit nf4 -> full precision" in n for n in plans[2].notes)
    assert any("on a CPU takes hours" in n and "T4 GPU" in n for n in plans[0].notes)
    # the estimate counts a row's tokens: 4 documents of 256 tokens (+ 8 memory and 3 marker tokens each)
    # and the prompt; such rows get a smaller micro-batch on the T4 than the 512 tokens it used to assume
    long = [QAExample("Where?", tuple("word " * 300 for _ in range(4)), ("There",))] * 4
    assert tokens_per_row(long, config, stage) == 4 * (256 + 8 + 3) + 4 * (8 + 1) + (6 + 5) // 4 + 1 + 40
    short_rows = plan_session(Run(tmp_path / "a"), stage, examples, config, {}, base="x", device=T4, params_b=7.24)
    long_rows = plan_session(Run(tmp_path / "b"), stage, long, config, {}, base="x", device=T4, params_b=7.24)
    assert long_rows.profile.micro_batch_size < short_rows.profile.micro_batch_size
    assert "tokens" in long_rows.profile.reason("batch")


def test_rows_per_step_is_fixed_but_its_cut_is_free(tmp_path, data_dir):
    assert split_rows(16, 1, 8) == (8, 2) and split_rows(16, 2, 8) == (8, 1) and split_rows(12, 1, 8) == (6, 2)
    assert split_rows(16, 1, 8, micro=2) == (2, 8) and split_rows(16, 1, 8, accum=4) == (4, 4)
    with pytest.raises(RunError, match="2 x grad_accum_steps 4 x 1 process"):
        split_rows(16, 1, 8, micro=2, accum=4)
    with pytest.raises(RunError, match="does not divide"):
        split_rows(16, 1, 8, micro=3)
    run_dir = tmp_path / "run"
    train(run_dir, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(MODEL),
          train_options={**TRAIN, "max_steps": 1})
    # a smaller micro-batch on resume was refused before ("micro_batch_size: run.json has 8"); now it is the cut
    assert train(run_dir, "stage1", model_options={}, train_options={"micro_batch_size": 2}) \
        == {"stage1": "already final"}
    with pytest.raises(RunError, match="rows_per_step: run.json has 4, this command asks 8"):
        train(run_dir, "stage1", model_options={}, train_options={"rows_per_step": 8})


def _stage1(tmp_path, data_dir, name, **train_options):
    return train(tmp_path / name, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(MODEL),
                 train_options={"max_steps": 2, "lr": 1e-3, "log_steps": 1, "save_minutes": None, **train_options},
                 device=CPU)


def test_out_of_memory_at_step_0_splits_the_step_and_gives_the_same_update(tmp_path, data_dir, caplog):
    def oom_above_one_row(_i, args):  # this "GPU" holds one row per pass
        if rows_of(args) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    _stage1(tmp_path, data_dir, "whole", micro_batch_size=4, grad_accum_steps=1)
    with on_micro_batch(oom_above_one_row) as passes, caplog.at_level(logging.WARNING, logger="clara_lite"):
        _stage1(tmp_path, data_dir, "split", micro_batch_size=4, grad_accum_steps=1)
    assert max_abs_diff(saved_adapters(tmp_path / "split" / "stage1" / "final"),
                        saved_adapters(tmp_path / "whole" / "stage1" / "final")) < 1e-6
    assert passes[0] == 1 + 1 + 2 * 4  # 4 rows fail, 2 rows fail, then 4 passes of 1 row for each of 2 steps
    messages = [r.message for r in caplog.records]
    assert any("Out of GPU memory at step 1 with 4 row(s) per pass: trying the step again as 2 x 2" in m
               for m in messages)
    record = json.loads((tmp_path / "split" / "run.json").read_text())
    assert record["sessions"][-1]["training"]["micro_batch_size"] == 1
    assert record["sessions"][-1]["training"]["grad_accum_steps"] == 4
    assert record["stages"]["stage1"]["train"]["rows_per_step"] == 4
    assert any("out of memory: micro-batch -> 1 x 4" in n for n in record["sessions"][-1]["training"]["notes"])


def test_out_of_memory_at_one_row_names_the_next_options(tmp_path, data_dir):
    def oom_always(_i, _args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with on_micro_batch(oom_always), pytest.raises(OutOfMemory) as err:
        _stage1(tmp_path, data_dir, "never", micro_batch_size=2, grad_accum_steps=1)
    text = str(err.value)
    assert "stage1 runs out of GPU memory even one row at a time" in text
    assert "--quantization 4bit" in text and "--doc-max-length 8" in text and "qwen2.5-0.5b" in text
    assert "--top-k" not in text  # a stage1 row has one document
    assert not (tmp_path / "never" / "stage1" / "final").exists()
    # the same options as a notebook sets them: 00_setup's parameters, no flags
    notebook = err.value.notebook_advice
    assert 'QUANTIZATION = "4bit" in 00_setup\'s parameters cell' in notebook and "DOC_MAX_LENGTH = 8" in notebook
    assert "a new RUN_NAME in 00_setup" in notebook and "--" not in notebook
