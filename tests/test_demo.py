"""The demo's path end to end on the tiny model (its numbers on the real model are read by people: make demo)."""

from __future__ import annotations

import json

from clara_lite.demo import run_demo


def test_demo_prints_clara_beside_both_controls_and_exports(tmp_path, capsys):
    summary = run_demo(tmp_path / "demo", base="tiny-random", steps={"stage1": 1, "stage2": 1, "stage3": 1})
    out = capsys.readouterr().out
    assert set(summary["heldout"]) == {"clara", "closed-book", "clara-zeroed"}
    for label in ("CLaRa ", "closed-book (base model, no documents)", "CLaRa, memory vectors zeroed"):
        assert label in out
    assert "Q: Where does " in out and "(gold " in out and "documents never trained on" in out
    report = json.loads((tmp_path / "demo" / "heldout_eval.json").read_text())
    assert report["count"] == 48 and [s["system"] for s in report["systems"]] == ["clara", "closed-book", "clara-zeroed"]
    assert (tmp_path / "demo" / "benchmarks" / "heldout-oracle" / "comparison.png").is_file()
    assert (tmp_path / "demo" / "clara_model.zip").is_file()
