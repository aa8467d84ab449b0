"""The shipped example data: 24 short factual documents with questions, as training JSONL.

Small enough for a CPU demo and a notebook smoke run; shaped exactly like real data, so every
path (validation, all three stages, evaluation) runs on it.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

from .stages import STAGES


def load_facts() -> list[dict]:
    """``[{"doc", "qa": [[question, answer], ...], "summary"}, ...]``."""
    return json.loads(resources.files("clara_lite.example_data").joinpath("facts.json").read_text("utf-8"))


def _rows_with_candidates(facts, pool, n_candidates, rng):
    rows = []
    for fact in facts:
        negatives = rng.sample([d for d in pool if d != fact["doc"]], n_candidates - 1)
        pos = rng.randrange(n_candidates)
        docs = negatives[:pos] + [fact["doc"]] + negatives[pos:]
        for question, answer in fact["qa"]:
            rows.append({"question": question, "docs": docs, "gold_answer": answer, "pos_index": [pos]})
    return rows


def write_example_data(folder: str | Path, *, heldout: int = 4, n_candidates: int = 4, seed: int = 0) -> dict:
    """Write ``stage1.jsonl``, ``stage2.jsonl``, ``stage3.jsonl`` and ``heldout.jsonl`` into ``folder``.

    The last ``heldout`` documents appear in no training file (held-out evaluation); their
    candidate lists draw negatives from all documents. Returns ``{name: path}``.
    """
    rng = random.Random(seed)
    facts = load_facts()
    train, held = facts[:-heldout], facts[-heldout:]
    pool = [f["doc"] for f in facts]
    stage1 = []
    for fact in train:
        stage1.append({"data_type": "qa", "question": [q for q, _ in fact["qa"]],
                       "answers": [a for _, a in fact["qa"]], "docs": [fact["doc"]]})
        stage1.append({"data_type": "paraphrase", "question": "", "answers": [fact["summary"]], "docs": [fact["doc"]]})
    qa_rows = _rows_with_candidates(train, [f["doc"] for f in train], n_candidates, rng)
    files = {**{s.name: stage1 if s.row == "pretrain" else qa_rows for s in STAGES.values()},
             "heldout": _rows_with_candidates(held, pool, n_candidates, rng)}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in files.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths
