"""Non-finite losses and gradients (issue 12, defect 8): a bad step is skipped as GradScaler does, and
N in a row stop the stage with the last good weights saved and a message, in fp32 and on the fp16
(T4) path."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import saved_adapters, tiny_model
from synthetic_data import write_run_data

from clara_lite.core.config import TrainConfig
from clara_lite.core.layout import verify
from clara_lite.model.data import read_jsonl
from clara_lite.model.saving import save_model
from clara_lite.model.stages import get_stage
from clara_lite.train.trainer import TrainingDiverged, train_stage
from clara_lite.train.update import make_accelerator, optimizer_step

MODEL = dict(doc_max_length=16, compr_rate=4, lora_r=4, max_decoder_length=128)
LONG = "Where does she live, " + "and what about the river and the hills " * 40 + "?"


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Stage2 rows; rows 3 and 7 ask a question whose prompt alone fills the 128-token decoder,
    so their answer is cut off entirely: a loss over zero tokens, NaN."""
    folder = write_run_data(tmp_path_factory.mktemp("data"))
    lines = (folder / "stage2.jsonl").read_text().splitlines()
    for i in (3, 7):
        lines[i] = json.dumps({**json.loads(lines[i]), "question": LONG})
    (folder / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "bad.jsonl").write_text("".join(json.dumps({**json.loads(line), "question": LONG}) + "\n"
                                              for line in lines))
    return {name: read_jsonl(folder / f"{name}.jsonl", "stage2") for name in ("mixed", "bad")}


def _finite(folder) -> bool:
    return all(torch.isfinite(t).all() for t in saved_adapters(folder).values())


def test_a_step_with_a_nan_loss_is_skipped_and_training_goes_on(tmp_path, rows):
    model = tiny_model(**MODEL)
    cfg = TrainConfig(max_steps=12, micro_batch_size=1, lr=1e-3, log_steps=1, save_minutes=None)
    summary = train_stage(model, get_stage("stage2"), rows["mixed"], tmp_path, cfg)
    assert summary["steps"] == 12
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("skipped_steps", 0) for r in logged) == 2  # the two rows that cannot be scored
    assert all(math.isfinite(r["loss"]) for r in logged if "loss" in r)
    assert _finite(tmp_path / "final")  # without the skip, one NaN step makes every adapter weight NaN


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_n_bad_steps_in_a_row_stop_with_the_last_good_weights_saved(tmp_path, rows, precision):
    model = tiny_model(**MODEL)
    save_model(model, tmp_path / "initial")
    cfg = TrainConfig(max_steps=10, micro_batch_size=1, lr=1e-3, log_steps=1, save_minutes=None,
                      mixed_precision=precision, max_nonfinite_steps=3)
    with pytest.raises(TrainingDiverged) as err:
        train_stage(model, get_stage("stage2"), rows["bad"], tmp_path / "stage2", cfg)
    text = str(err.value)
    assert "stage2 stopped at step 3/10: 3 steps in a row had a non-finite loss or gradient" in text
    assert "the weights are those of step 0" in text and "step-000003" in text and "--lr" in text
    checkpoint = tmp_path / "stage2" / "checkpoints" / "step-000003"
    assert verify(checkpoint) is None and not (tmp_path / "stage2" / "final").exists()
    before, after = saved_adapters(tmp_path / "initial"), saved_adapters(checkpoint / "model")
    assert all(torch.equal(before[k], after[k]) for k in before)  # no skipped step touched a weight
    if precision == "fp16":  # the T4 path: the scaler was left as it was, ready for the resume
        assert json.loads((checkpoint / "state.json").read_text())["scaler"]["scale"] == 2.0**16


def test_fp16_gradients_that_overflow_are_skipped_by_the_scaler_which_lowers_its_scale(tmp_path):
    """The T4 case: a finite loss whose fp16 gradients overflow. The scaler skips the step and halves
    its scale; the weights do not move; the next step, at the lower scale, trains."""
    stage = get_stage("stage2")
    model = tiny_model(**MODEL)
    stage.prepare(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    acc = make_accelerator(TrainConfig(mixed_precision="fp16"), tmp_path)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=1000)  # overflows fp16 at once
    wrapped, optimizer = acc.prepare(model, torch.optim.AdamW(params, lr=1e-3))
    rows = read_jsonl(write_run_data(tmp_path / "data") / "stage2.jsonl", "stage2")[:2]
    batches = [stage.collator(model)(rows)]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    steps = []
    while len(steps) < 40 and (not steps or "skipped_steps" in steps[-1]):
        steps.append(optimizer_step(acc, wrapped, stage, batches, params, optimizer, 1.0))
    first_good = len(steps) - 1
    assert "skipped_steps" not in steps[-1] and first_good > 0  # skipped, then trained at a lower scale
    assert all(math.isfinite(m["loss"]) for m in steps)  # the loss itself was finite every time
    assert acc.scaler.get_scale() == 2.0**40 * 0.5**first_good
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach())]
    assert moved and all(torch.isfinite(p).all() for p in params)


def test_cli_with_a_learning_rate_that_blows_up_stops_with_one_message(tmp_path):
    data = write_run_data(tmp_path / "data") / "stage1.jsonl"
    cmd = [sys.executable, "-m", "clara_lite.cli", "train", "--stage", "stage1", "--run-dir", str(tmp_path / "run"),
           "--data", str(data), "--base", "tiny-random", "--doc-max-length", "16", "--compr-rate", "4", "--lora-r",
           "4", "--top-k", "2", "--max-steps", "6", "--batch-size", "2", "--lr", "1e30", "--max-nonfinite-steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3 and "Traceback" not in out, out
    assert "2 steps in a row had a non-finite loss or gradient" in out and "--lr" in out
    assert not (tmp_path / "run" / "stage1" / "final").exists()
