"""Questions to evaluate on, from whatever file holds them: our training rows, upstream CLaRa's eval files,
or a benchmark in its own format (NQ, HotpotQA, MuSiQue, 2WikiMultiHopQA, SQuAD, ...).

- stage2/3 rows and upstream's eval files (``{"question", "docs", "golden_answers"|"gold_answer",
  "pos_index"}``, what the paper's Normal and Oracle numbers are computed on) are read as they are;
- stage1 rows (several questions about one document, like ``upstream_pretrain_data.jsonl``) become one
  question per QA pair, each with its document;
- anything else goes through the dataset converters (:mod:`clara_lite.pipeline.convert`): each question
  keeps every paragraph its record ships (gold ones and the dataset's distractors), ``pos_index`` marking
  the gold ones.

For example::

    rows = load_questions("hotpot_dev_distractor_v1.json", limit=500)
    search = pool_retriever([d for r in rows for d in r.docs])         # BM25 for the normal setting
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ..model.data import ANSWER_KEYS, DOC_KEYS, QAExample, questions_of, read_jsonl
from ..model.stages import ORDER, STAGES, get_stage
from .convert import convert
from .negatives import nearest
from .records import Corpus
from .sources import detect_format, load_records

log = logging.getLogger(__name__)

PRETRAIN = next(s for s in STAGES.values() if s.row == "pretrain")  # the stage reading several QAs per doc
QA = get_stage(ORDER[-1])  # the stage reading one question over candidate documents


def _is_pretrain_row(record: dict) -> bool:
    return "data_type" in record or isinstance(record.get("question"), list)


def _is_qa_row(record: dict) -> bool:
    """A question over a list of document strings with an answer: ours, seed 001's, upstream's eval files."""
    docs = next((record[k] for k in DOC_KEYS if k in record), None)
    return isinstance(record.get("question"), str) and isinstance(docs, list) \
        and all(isinstance(d, str) for d in docs) and any(k in record for k in ANSWER_KEYS)


def questions_from_corpus(corpus: Corpus) -> list[QAExample]:
    """Each question with its gold documents first, then the distractors its record came with."""
    rows = []
    for item in corpus.items:
        docs = [corpus.docs[d] for d in (*item.positives, *item.negatives)]
        rows.append(QAExample(item.question, tuple(docs), tuple(item.answers), tuple(range(len(item.positives)))))
    return rows


def load_questions(source: str | Path, *, limit: int = 0, fmt: str | None = None, split: str | None = None,
                   config: str | None = None) -> list[QAExample]:
    """Up to ``limit`` questions (0: all) of ``source`` (a file, a dataset folder or a Hub name; see the
    module doc), as stage2/3 examples."""
    path = Path(str(source))
    if path.is_file() and path.suffix.lower() == ".jsonl" and fmt is None:
        records, _ = load_records(path, limit=1, progress=False)
        if _is_pretrain_row(records[0]):
            return questions_of(read_jsonl(path, PRETRAIN))[: limit or None]
        if _is_qa_row(records[0]):  # our rows, upstream's eval files: read (and checked) as rows
            return read_jsonl(path, QA)[: limit or None]
    records, description = load_records(source, split=split, config=config, limit=limit, progress=False)
    fmt = fmt or detect_format(records[0])
    rows = questions_from_corpus(convert(records, fmt))
    if not rows:
        raise ValueError(f"{description}: no answerable question with a document in {len(records)} {fmt} records")
    log.info("%s: %d questions (%s)", description, len(rows), fmt)
    return rows[: limit or None]


def pool_retriever(pool: Sequence[str], strategy: str = "bm25") -> Callable[[Sequence[str], int], list[list[int]]]:
    """``retriever(questions, k)`` -> each question's ``k`` best pool indices, by BM25 (or MiniLM embeddings)."""
    pool = list(pool)
    return lambda questions, k: nearest(questions, pool, k, strategy)
