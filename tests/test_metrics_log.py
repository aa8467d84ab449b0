"""The metrics log survives a crash that cut its last line: resuming rewrites it before appending."""

from __future__ import annotations

import json

from clara_lite.train.metrics_log import MetricsLog


def test_a_torn_last_line_is_dropped_on_resume_and_the_next_row_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"stage": "stage1", "step": 1, "loss": 2.0}) + "\n" + '{"stage": "stage1", "st')
    log = MetricsLog(path, "stage1")
    log.truncate_after(1)  # resuming at step 1: nothing after it, but the torn line must go
    log.append({"step": 2, "loss": 1.5})
    again = MetricsLog(path, "stage1")
    assert [r["step"] for r in again.rows()] == [1, 2]
    assert again.rows()[1]["loss"] == 1.5


def test_rows_after_the_checkpoint_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"stage": "stage1", "step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    MetricsLog(path, "stage1").truncate_after(2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
