"""Upstream CLaRa's training command lines (apple/ml-clara's train_sft flags) run as clara-lite train."""

from __future__ import annotations

import json

import pytest
from conftest import require_shared

from clara_lite.cli import main
from clara_lite.core.errors import exit_status
from clara_lite.train.upstream_args import UpstreamArgsError, is_upstream, translate


def test_an_upstream_stage1_command_trains_on_the_shared_rows(tmp_path, capsys):
    rows = require_shared("data", "upstream_pretrain_data.jsonl").read_text().splitlines()[:8]
    data = tmp_path / "pretrain_data.jsonl"
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "ckpt"
    # upstream's scripts/train_pretraining.sh, with a tiny base and small sizes
    code = main(["train", "--max_len", "2048", "--dataset", str(data), "--pretrain", "tiny-random",
                 "--train_batch_size", "4", "--micro_train_batch_size", "2", "--ckpt_path", str(run),
                 "--max_samples", "500", "--save_path", str(run), "--save_steps", "-2", "--logging_steps", "1",
                 "--zero_stage", "2", "--max_epochs", "1", "--bf16", "--flash_attn", "--learning_rate", "1e-4",
                 "--stage", "stage1", "--generation_top_k", "1", "--qa_loss", "--doc_max_length", "16",
                 "--compress_rate", "4", "--mse_loss"])
    assert code == 0
    said = capsys.readouterr().err
    assert "--compress_rate 4 -> --compr-rate 4" in said and "--zero_stage 2: ignored" in said
    record = json.loads((run / "run.json").read_text())
    model, stage = record["model"], record["stages"]["stage1"]
    assert (model["compr_rate"], model["doc_max_length"], model["mse_weight"], model["max_decoder_length"]) == \
        (4, 16, 0.1, 2048)
    assert (stage["train"]["rows_per_step"], stage["train"]["lr"], stage["train"]["epochs"]) == (4, 1e-4, 1.0)
    assert stage["data"]["rows"] == 8 and (run / "stage1" / "final").is_dir()


def test_upstream_stage2_is_refused_with_both_of_ours_and_nothing_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--stage", "stage2", "--pretrain", "tiny-random", "--dataset", "e2e.jsonl",
                 "--save_path", str(run)])
    said = capsys.readouterr().err
    assert code == 2 and "our stage3" in said and "--stage stage1_2" in said
    assert not run.exists()
    with pytest.raises(UpstreamArgsError) as err:
        translate(["--stage", "stage2_reasoning"])
    assert exit_status(err.value) == 2
    with pytest.raises(UpstreamArgsError, match="clara-lite ask"):
        translate(["--pure_inference"])


def test_stage_names_and_switches_translate_and_our_own_flags_pass_through():
    argv, lines = translate(["--stage", "e2e", "--lr_scheduler", "constant", "--max-steps", "3",
                             "--eval_steps=-1", "--run-dir", "r"])
    assert argv == ["--stage", "stage3", "--scheduler", "constant", "--max-steps", "3", "--run-dir", "r",
                    "--mse-weight", "0"]
    assert any("no --mse_loss" in line for line in lines) and any("--eval_steps -1: not by steps" in line
                                                                   for line in lines)
    assert translate(["--stage", "stage1_2"])[0][:2] == ["--stage", "stage2"]
    assert is_upstream(["--stage", "stage1_2"]) and is_upstream(["--compress_rate", "16"])
    assert not is_upstream(["--stage", "stage2", "--compr-rate", "16", "--run-dir", "r"])  # ours: ours
    with pytest.raises(UpstreamArgsError, match="--scheduler with one of"):
        translate(["--lr_scheduler", "cosine_with_restarts_and_magic"])
