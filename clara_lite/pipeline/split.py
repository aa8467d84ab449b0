"""A :class:`Corpus` -> ``stage1.jsonl``, ``stage2.jsonl``, ``stage3.jsonl`` and ``heldout.jsonl``.

The split is by document unit (a source file, an article), never by question: a held-out
question's documents, and every other passage of their units, appear in no training file, not
even as a negative. Units joined by a question that needs documents of both (HotpotQA) are
split together. Which units are held out depends only on their names and the seed, so adding
documents later does not reshuffle the rest.

Rows (the names the training runner reads from ``--data-dir``):

- stage1: per training document, a ``paraphrase`` row (its summary) and a ``qa`` row with all
  its questions; every stage1 row has the same number of docs (batches need it), so questions
  needing another number of documents are left out of stage1 and counted.
- stage2 = stage3: ``{"question", "docs", "gold_answer", "pos_index"}`` with ``k`` candidates
  drawn from training documents only.
- heldout (stage3 format): the held-out questions, candidates from held-out documents (training
  documents fill in only when there are too few, with a warning).

For example::

    paths, stats = write_stage_files(corpus, "data/", k=4, strategy="bm25")
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from pathlib import Path

from ..model.stages import STAGES
from .negatives import Embedder, candidates
from .records import Corpus, QAItem, write_jsonl

log = logging.getLogger(__name__)

HELDOUT = "heldout"  # held-out questions, in the format of the last stage's rows
STAGE_FILES = (*STAGES, HELDOUT)


def _units(corpus: Corpus) -> dict[str, str]:
    """doc id -> split unit: its group, merged with the groups of docs it shares a question with."""
    parent = {g: g for g in corpus.groups.values()}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for item in corpus.items:
        roots = sorted({find(corpus.groups[d]) for d in item.positives})
        for other in roots[1:]:
            parent[other] = roots[0]
    return {d: find(g) for d, g in corpus.groups.items()}


def split_units(corpus: Corpus, heldout: float = 0.1, seed: int = 0) -> tuple[set[str], set[str]]:
    """``(train doc ids, held-out doc ids)``; about ``heldout`` of the units (at least one when
    there are two or more and ``heldout`` > 0)."""
    if not 0 <= heldout < 1:
        raise ValueError(f"heldout must be in [0, 1), got {heldout}")
    units = _units(corpus)
    names = sorted(set(units.values()), key=lambda u: hashlib.sha1(f"{seed}\n{u}".encode()).hexdigest())
    n_held = round(heldout * len(names))
    if heldout > 0 and n_held == 0 and len(names) >= 2:
        n_held = 1
    held_units = set(names[:n_held])
    held = {d for d, u in units.items() if u in held_units}
    return set(corpus.docs) - held, held


def _stage1_rows(corpus: Corpus, items: list[QAItem], train: set[str]) -> tuple[list[dict], int]:
    n_docs = Counter(len(i.positives) for i in items).most_common(1)
    n_docs = n_docs[0][0] if n_docs else 1
    by_docs: dict[tuple[str, ...], list[QAItem]] = defaultdict(list)
    for item in items:
        if len(item.positives) == n_docs:
            by_docs[item.positives].append(item)
    left_out = sum(len(i.positives) != n_docs for i in items)
    rows = []
    if n_docs == 1:  # a document's summary comes right before its questions
        for d in (d for d in corpus.docs if d in train and d in corpus.summaries):
            rows.append((d, {"data_type": "paraphrase", "question": "", "answers": [corpus.summaries[d]],
                             "docs": [corpus.docs[d]]}))
    for docs, group in by_docs.items():
        rows.append((docs[0], {"data_type": "qa", "question": [i.question for i in group],
                               "answers": [i.explanation or i.answers[0] for i in group],
                               "docs": [corpus.docs[d] for d in docs]}))
    order = {d: n for n, d in enumerate(corpus.docs)}
    rows.sort(key=lambda r: order[r[0]])  # stable: paraphrase before qa of the same document
    return [r for _, r in rows], left_out


def _qa_rows(corpus: Corpus, items: list[QAItem], allowed: list[str], pool: list[str], k: int, strategy: str,
             seed: int, embedder) -> list[dict]:
    index = {d: n for n, d in enumerate(pool)}
    texts, ok = [corpus.docs[d] for d in pool], set(allowed)
    chosen = candidates([i.question for i in items], [[index[d] for d in i.positives] for i in items], texts,
                        k=k, strategy=strategy, seed=seed,
                        given=[[index[d] for d in i.negatives if d in ok] for i in items],
                        allowed=[index[d] for d in allowed], embedder=embedder)
    rows = []
    for item, (docs, pos_index) in zip(items, chosen, strict=True):
        answer = item.answers[0] if len(item.answers) == 1 else list(item.answers)
        rows.append({"question": item.question, "docs": [texts[j] for j in docs], "gold_answer": answer,
                     "pos_index": pos_index})
    return rows


def stage_rows(corpus: Corpus, *, k: int = 4, strategy: str = "bm25", heldout: float = 0.1, seed: int = 0,
               embedder=None) -> tuple[dict[str, list[dict]], dict]:
    """The four files' rows and counts (see the module doc)."""
    if k < 2:
        raise ValueError(f"k (candidates per question) must be >= 2, got {k}")
    if strategy == "embedding" and embedder is None:
        embedder = Embedder()  # once, for the training and the held-out rows
    train, held = split_units(corpus, heldout, seed)
    train_items = [i for i in corpus.items if all(d in train for d in i.positives)]
    held_items = [i for i in corpus.items if all(d in held for d in i.positives)]
    train_docs = [d for d in corpus.docs if d in train]
    held_docs = [d for d in corpus.docs if d in held]
    stage1, left_out = _stage1_rows(corpus, train_items, train)
    qa = _qa_rows(corpus, train_items, train_docs, train_docs, k, strategy, seed, embedder)
    held_pool = held_docs
    if held_items and len(held_docs) < k:
        log.warning("only %d held-out documents for k=%d candidates: held-out rows also draw negatives from "
                    "training documents (hold out more documents to avoid it)", len(held_docs), k)
        held_pool = held_docs + train_docs
    held_rows = _qa_rows(corpus, held_items, held_pool, held_docs + train_docs, k, strategy, seed, embedder) \
        if held_items else []
    rows = {**{s.name: stage1 if s.row == "pretrain" else qa for s in STAGES.values()}, HELDOUT: held_rows}
    stats = {"documents": len(corpus.docs), "train_documents": len(train_docs), "heldout_documents": len(held_docs),
             "questions": len(corpus.items), "train_questions": len(train_items), "heldout_questions": len(held_items),
             "dropped_across_split": len(corpus.items) - len(train_items) - len(held_items),
             "stage1_rows": len(stage1), "stage1_left_out": left_out, "k": k, "strategy": strategy}
    return rows, stats


def write_stage_files(corpus: Corpus, out_dir: str | Path, **kwargs) -> tuple[dict[str, Path], dict]:
    """Write the four files into ``out_dir`` (atomically each); ``kwargs`` as :func:`stage_rows`."""
    rows, stats = stage_rows(corpus, **kwargs)
    if not all(rows[s] for s in STAGES):
        raise ValueError(f"no training rows: {stats['questions']} questions over {stats['documents']} documents "
                         f"({stats['train_questions']} in training); synthesis produced too little")
    out = Path(out_dir)
    paths = {}
    for name in STAGE_FILES:
        if name == HELDOUT and not rows[name]:
            (out / f"{HELDOUT}.jsonl").unlink(missing_ok=True)
            continue
        paths[name] = write_jsonl(out / f"{name}.jsonl", rows[name])
    log.info("wrote %s: %s", ", ".join(f"{n}.jsonl" for n in paths), stats)
    return paths, stats
