"""Tiny seeded JSONL files for runner tests (short rows keep CPU steps fast)."""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ida", "Jo", "Kim", "Lu"]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Doha", "Riga", "Bern"]


def write_run_data(folder: Path, n: int = 12, seed: int = 0) -> Path:
    """stage1.jsonl, stage2.jsonl, stage3.jsonl in ``folder`` (the names the data pipeline writes)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    facts = [(name, rng.choice(CITIES)) for name in NAMES[:n]]
    docs = [f"{name} lives in {city}." for name, city in facts]
    s1, s23 = [], []
    for i, ((name, city), doc) in enumerate(zip(facts, docs, strict=True)):
        if i % 3 == 2:
            s1.append({"data_type": "paraphrase", "question": "", "answers": [f"{city} is home to {name}."],
                       "docs": [doc]})
        else:
            s1.append({"data_type": "qa", "question": [f"Where does {name} live?"], "answers": [city], "docs": [doc]})
        others = rng.sample([d for d in docs if d != doc], 3)
        pos = rng.randrange(4)
        cands = others[:pos] + [doc] + others[pos:]
        s23.append({"question": f"Where does {name} live?", "docs": cands, "gold_answer": city, "pos_index": [pos]})
    for name, rows in (("stage1", s1), ("stage2", s23), ("stage3", s23)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
