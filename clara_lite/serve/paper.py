"""The paper's numbers, to print beside ours: CLaRa (arXiv 2511.18659) on NQ, HotpotQA, MuSiQue and
2WikiMultiHopQA, Mistral-7B base, compression rates 4/16/32, Normal (top-5 retrieved) and Oracle (gold
document included) settings, as the tables in apple/ml-clara's README give them (scores in %).

The README does not name the metric; upstream's ``evaluation/evaluate.py`` computes ``acc`` (cover-EM: every
gold token in the answer), EM and F1, so set these beside our cover-EM first. ``text-rag`` is the README's
"Mistral-7B w/ retrieval" row: the base model reading the documents' text.

>>> paper_scores("mistral-7b", 16, "oracle", "nq")
{'text-rag': 71.64, 'clara': 75.48}
"""

from __future__ import annotations

import re

from .compare import CLARA, NORMAL, ORACLE, TEXT_RAG

DATASETS = ("nq", "hotpotqa", "musique", "2wiki")
SOURCE = "apple/ml-clara README, 'Compression Performance' tables (Mistral-7B); arXiv 2511.18659"

# (setting, system, compression rate or None) -> scores on DATASETS, in order
_TABLE = {
    (NORMAL, TEXT_RAG, None): (54.58, 42.94, 8.94, 44.24),
    (NORMAL, CLARA, 4): (57.05, 45.09, 10.34, 46.94),
    (NORMAL, CLARA, 16): (55.56, 43.72, 10.55, 46.00),
    (NORMAL, CLARA, 32): (54.64, 43.52, 10.55, 46.58),
    (ORACLE, TEXT_RAG, None): (71.64, 70.77, 45.72, 68.83),
    (ORACLE, CLARA, 4): (76.50, 73.81, 46.26, 70.48),
    (ORACLE, CLARA, 16): (75.48, 70.79, 43.15, 66.16),
    (ORACLE, CLARA, 32): (73.77, 69.51, 38.31, 64.54),
}
_ALIASES = {"nq": "nq", "naturalquestions": "nq", "natural_questions": "nq", "hotpotqa": "hotpotqa", "hotpot": "hotpotqa",
            "musique": "musique", "2wiki": "2wiki", "2wikimultihopqa": "2wiki", "2wikimqa": "2wiki"}


def dataset_of(name: str) -> str | None:
    """The benchmark a file or dataset name is about (``nq_eval_with_pos.jsonl`` -> ``nq``), if any."""
    text = re.sub(r"[^a-z0-9_]", "_", str(name).lower())
    for alias in sorted(_ALIASES, key=len, reverse=True):
        if alias in text:
            return _ALIASES[alias]
    return None


def paper_scores(base_model: str, compr_rate: int, setting: str, dataset: str | None) -> dict[str, float]:
    """``{system: score}`` the paper reports for this base model, compression rate, setting and dataset;
    empty when it reports none (another base model or rate, an unknown dataset)."""
    dataset = dataset_of(dataset or "")
    if dataset is None or "mistral" not in str(base_model).lower():
        return {}
    col = DATASETS.index(dataset)
    out = {}
    for (where, system, rate), scores in _TABLE.items():
        if where == setting and rate in (None, compr_rate):
            out[system] = scores[col]
    return out if CLARA in out else {}


RATES = (4, 16, 32)


def paper_reference(base_model: str, compr_rate: int, setting: str, dataset: str | None) -> tuple[dict, list[str]]:
    """``(scores, notes)``: the paper's figures for this dataset, setting and compression rate whatever the base
    model, and what makes them not like for like (another base model, another retrieval, no such rate).

    >>> scores, notes = paper_reference("smollm2-135m", 16, "oracle", "nq_eval.jsonl")
    >>> scores, notes[0][:36]
    ({'text-rag': 71.64, 'clara': 75.48}, "the paper's base model is Mistral-7B")
    """
    name = dataset_of(dataset or "")
    if name is None:
        return {}, [f"the paper reports {', '.join(DATASETS)} only; name the dataset (its file name or --dataset)"]
    if compr_rate not in RATES:
        return {}, [f"the paper reports compression {', '.join(map(str, RATES))}, not {compr_rate}"]
    scores = paper_scores("mistral-7b", compr_rate, setting, name)
    notes = []
    if "mistral" not in str(base_model).lower():
        notes.append(f"the paper's base model is Mistral-7B, this model's is {base_model}: not like for like")
    if setting == NORMAL:
        notes.append("the paper's normal setting retrieves the top 5 with its own retriever from the benchmark's "
                     "corpus; here BM25 ranks this file's own documents")
    return scores, notes + [f"paper: {SOURCE}; its metric is cover-EM (acc)"]
