"""The upstream stage1 data file (1,000 rows written by upstream CLaRa) loads and trains unchanged."""

from __future__ import annotations

import json
import math

from helpers import tiny_model

from clara_lite.core.config import TrainConfig
from clara_lite.model.data import read_jsonl
from clara_lite.model.stages import get_stage
from clara_lite.train.trainer import train_stage


def test_upstream_file_trains_unchanged(shared_dir, tmp_path):
    rows = read_jsonl(shared_dir / "data" / "upstream_pretrain_data.jsonl", "stage1")
    assert len(rows) == 1000
    model = tiny_model(doc_max_length=64, compr_rate=16)
    cfg = TrainConfig(max_steps=2, micro_batch_size=2, lr=1e-3, log_steps=1, save_minutes=None)
    summary = train_stage(model, get_stage("stage1"), rows[:8], tmp_path, cfg)
    assert summary["steps"] == 2
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    assert all(math.isfinite(r["lm_loss"]) and r["lm_loss"] > 0 and r["mse_loss"] > 0 for r in logged)
    assert (tmp_path / "final" / "adapters" / "encoder" / "adapter_model.safetensors").is_file()
