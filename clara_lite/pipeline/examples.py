"""The shipped example data: short documents about invented people, with questions, as training JSONL.

Why invented: "Where does Orla Vennimark live?" can only be answered by reading the document, so
a right answer proves that the compressed document was read, while the base model closed-book (and
CLaRa with its memory vectors zeroed) can only guess; a capital city would not prove anything. The
people (invented first names x surnames) each get a place, a job and a favourite colour from small
lists of common words (``example_data/world.json``), drawn by a seeded RNG: every run writes the same
files. Each block of 16 people uses every place and job once (8 colours twice), so any block held
out is balanced and a constant guess scores at most 1/16 (colours 1/8).

Small enough for a CPU demo and a notebook smoke run; shaped exactly like real data, so every path
(validation, all three stages, evaluation) runs on it.
"""

from __future__ import annotations

import itertools
import json
import random
from importlib import resources
from pathlib import Path

from ..model.stages import ORDER, STAGES

ATTRIBUTES = ("place", "job", "colour")
BLOCK = 16  # people per balanced block


def load_world() -> dict:
    return json.loads(resources.files("clara_lite.pipeline.example_data").joinpath("world.json").read_text("utf-8"))


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def load_facts(n: int = 24, seed: int = 0) -> list[dict]:
    """``n`` invented people as ``[{"doc", "qa": [[question, answer], ...], "summary"}, ...]``."""
    world, rng = load_world(), random.Random(seed)
    names = [f"{first} {last}" for first, last in itertools.product(world["first_names"], world["surnames"])]
    if n > len(names):
        raise ValueError(f"the example world has {len(names)} people; asked for {n}")
    rng.shuffle(names)
    values = {a: [] for a in ATTRIBUTES}
    while len(values["place"]) < n:  # a fresh permutation per block, drawn per attribute: independent, balanced
        for attribute, pool in zip(ATTRIBUTES, (world["places"], world["jobs"], world["colours"]), strict=True):
            block = pool * (BLOCK // len(pool))
            values[attribute] += rng.sample(block, len(block))
    facts = []
    for i, name in enumerate(names[:n]):
        slots = {"name": name, "first": name.split()[0], **{a: values[a][i] for a in ATTRIBUTES}}
        doc = world["documents"][i % len(world["documents"])].format(**slots)
        doc = doc.replace(f"a {slots['job']}", _article(slots["job"]))
        qa = [[world["questions"][a].format(**slots), slots[a]] for a in ATTRIBUTES]
        facts.append({"doc": doc, "qa": qa, "summary": world["summary"].format(**slots).replace(
            f"a {slots['job']}", _article(slots["job"]))})
    return facts


def _rows_with_candidates(facts, pool, n_candidates, rng):
    rows = []
    for fact in facts:
        negatives = rng.sample([d for d in pool if d != fact["doc"]], n_candidates - 1)
        pos = rng.randrange(n_candidates)
        docs = negatives[:pos] + [fact["doc"]] + negatives[pos:]
        for question, answer in fact["qa"]:
            rows.append({"question": question, "docs": docs, "gold_answer": answer, "pos_index": [pos]})
    return rows


def write_example_data(folder: str | Path, *, n_facts: int = 24, heldout: int = 4, n_candidates: int = 4,
                       stage2_candidates: int | None = None, seed: int = 0) -> dict:
    """Write ``stage1.jsonl``, ``stage2.jsonl``, ``stage3.jsonl`` and ``heldout.jsonl`` into ``folder``.

    The last ``heldout`` people appear in no training file (held-out evaluation on unseen documents);
    their candidate lists draw negatives from all documents. Stage2 rows hold ``stage2_candidates``
    documents (default ``n_candidates``; 1: the question's own document, what a top-1 reader gets after
    retrieval). Returns ``{name: path}``.
    """
    rng = random.Random(seed)
    facts = load_facts(n_facts, seed)
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
    if stage2_candidates not in (None, n_candidates):
        files[ORDER[1]] = _rows_with_candidates(train, [f["doc"] for f in train], stage2_candidates, rng)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in files.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths
