"""--eval-data / --eval-steps / --best-metric: held-out rows in metrics.jsonl, exactly once after a kill, the
best step kept, and training unchanged by evaluating."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_RUN, TINY_RUN_FLAGS, max_abs_diff, saved_adapters
from test_training import CLI_TRAIN, KILLPOINT, TRAIN

from clara_lite.core.config import TrainConfig
from clara_lite.core.layout import verify
from clara_lite.train.launch import train

EVAL = {"eval_steps": 2, "eval_questions": 4, "best_metric": "loss"}
CLI_EVAL = ["--eval-steps", "2", "--eval-questions", "4", "--best-metric", "loss"]


def _rows(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows) of the run's stage1 metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "stage1" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The same stage1 run without and with held-out evaluation (stage1 rows: a loss, and their QA pairs)."""
    root = tmp_path_factory.mktemp("runs")
    plain, evaluated = root / "plain", root / "evaluated"
    train(plain, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN), train_options=dict(TRAIN))
    train(evaluated, "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN),
          train_options={**TRAIN, **EVAL, "eval_data": str(data_dir / "stage1.jsonl")})
    return plain, evaluated


def test_held_out_rows_are_logged_and_training_is_unchanged(runs):
    plain, evaluated = runs
    assert max_abs_diff(saved_adapters(plain / "stage1" / "final"), saved_adapters(evaluated / "stage1" / "final")) == 0
    train_rows, held = _rows(evaluated)
    assert [r["loss"] for r in train_rows] == [r["loss"] for r in _rows(plain)[0]]
    assert [r["step"] for r in held] == [2, 4, 6]
    for row in held:
        assert {"eval_loss", "eval_lm_loss", "eval_mse_loss", "eval_em", "eval_f1", "eval_cover_em"} <= set(row)
        assert row["eval_count"] == 4 and row["eval_loss"] > 0
    # the held-out loss is the training loss's definition: the same rows, weights and formula
    summary = json.loads((evaluated / "stage1" / "final" / "summary.json").read_text())
    assert summary["heldout"]["eval_loss"] == held[-1]["eval_loss"] and "loss" in summary["final_metrics"]
    assert (evaluated / "stage1" / "loss.png").stat().st_size > (plain / "stage1" / "loss.png").stat().st_size


def test_best_metric_keeps_the_best_step(runs):
    _, evaluated = runs
    held = _rows(evaluated)[1]
    best = min(held, key=lambda r: r["eval_loss"])
    folder = evaluated / "stage1" / "best"
    assert verify(folder) is None
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["step"] == best["step"] and summary["value"] == best["eval_loss"]
    assert summary["metric"] == "eval_loss"
    if best["step"] == 6:  # then the best is the final model
        assert max_abs_diff(saved_adapters(folder), saved_adapters(evaluated / "stage1" / "final")) == 0


def test_sigkill_then_rerun_keeps_each_evaluation_once_and_equal(tmp_path, data_dir, runs):
    run_dir = tmp_path / "run"
    args = ["train", "--stage", "stage1", "--run-dir", str(run_dir), "--data", str(data_dir / "stage1.jsonl"),
            *TINY_RUN_FLAGS, *CLI_TRAIN, *CLI_EVAL, "--eval-data", str(data_dir / "stage1.jsonl")]
    step4 = run_dir / "stage1" / "checkpoints" / "step-000004" / "manifest.json"
    killed = subprocess.run([sys.executable, str(KILLPOINT), str(step4), "KILL", *args], capture_output=True,
                            text=True, timeout=300)  # SIGKILL as step 5 starts
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    cmd = [sys.executable, "-m", "clara_lite.cli", *args]
    assert [r["step"] for r in _rows(run_dir)[1]] == [2, 4]
    again = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=300)  # --eval-data from run.json
    assert again.returncode == 0, again.stdout + again.stderr
    assert "step 4/6" in again.stderr
    train_rows, held = _rows(run_dir)
    ref_train, ref_held = _rows(runs[1])
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in held] == [2, 4, 6]
    for got, want in zip(held, ref_held, strict=True):
        for key in ("eval_loss", "eval_f1", "eval_em"):
            assert got[key] == pytest.approx(want[key], abs=1e-6)
    assert max_abs_diff(saved_adapters(run_dir / "stage1" / "final"), saved_adapters(runs[1] / "stage1" / "final")) \
        <= 1e-6


def test_eval_settings_are_checked(tmp_path, data_dir):
    with pytest.raises(ValueError, match="best_metric .*must be one of"):
        TrainConfig(best_metric="bleu")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": 3}\n')
    with pytest.raises(ValueError, match=r"(?s)--eval-data: .*bad.jsonl:1: field 'question'"):
        train(tmp_path / "run", "stage1", data=str(data_dir / "stage1.jsonl"), model_options=dict(TINY_RUN),
              train_options={**TRAIN, "eval_data": str(bad)})
