"""Public QA datasets (and our own synthesis) -> a :class:`Corpus` of documents and questions.

Each converter takes the dataset's records as dicts, as read from its JSON/JSONL file or iterated
from a ``datasets.Dataset`` (both layouts are accepted where they differ):

- ``squad``: SQuAD v1/v2, flat (``context``, ``question``, ``answers.text``) or nested
  (``data[].paragraphs[].qas[]``); unanswerable questions are skipped. Unit: the article title.
- ``hotpotqa``: ``context`` as ``[[title, sentences], ...]`` or ``{"title": [...], "sentences": [...]}``;
  the supporting paragraphs are the positives, the others the dataset's distractors. Unit: title.
- ``2wiki``: 2WikiMultiHopQA, which has HotpotQA's layout (plus ``evidences`` triples, unused).
- ``musique``: ``paragraphs[]`` of ``{title, paragraph_text, is_supporting}``; the supporting ones
  are the positives; ``answer`` and ``answer_aliases`` the answers; unanswerable questions
  (``answerable: false``, the "full" version) are skipped. Unit: title.
- ``pubmedqa``: ``context.contexts`` (Hub) or ``CONTEXTS`` (``ori_pqal.json``), the abstract, answers
  ``final_decision`` (yes/no/maybe);
  ``long_answer`` becomes the stage1 answer; ``answer="long"`` makes ``long_answer`` the answer
  everywhere (what seed 001 trains on). Records keyed by PubMed id are accepted. Unit: pubid.
- ``medqa``: USMLE questions with ``options`` (``{"A": ...}`` or ``[{"key", "value"}]``) and
  ``answer``; MedQA ships no passages, so a question's options are its document (the model reads
  the choices, compressed, and answers with the right one). Unit: the question.
- ``nq``: Natural Questions-style: DPR (``positive_ctxs``, ``hard_negative_ctxs``, ``answers``),
  simplified NQ (``document_text``, ``annotations``) or the Hugging Face ``natural_questions``
  layout (``document.tokens``, ``annotations`` as lists); the long answer is the passage.
  Unit: the page title or URL.
- ``synthesis``: rows of our ``synth.jsonl``. Unit: the source file.
- ``seed001``: one JSONL for every stage, ``{"question", "docs", "gold_answer"[, "pos_index"]}``
  (seed 001's file): the docs at ``pos_index`` (all of them when absent) are the positives, the
  others its negatives; stage1 gets QA rows from it. Unit: the question's documents.
- ``instruction``: ``{"instruction", "input", "output"}`` (Alpaca, seed 002): ``input`` is the
  document, ``instruction`` the question and ``output`` the answer. Unit: the input. A row without an
  input (seed 002's ``{"instruction", "output"}``) is a chat-tuning pair, not a question about a document:
  its output as the document would teach copying the answer from itself. The outputs are the knowledge, so
  :func:`instruction_outputs` gives them to be written as documents, and questions about them are
  synthesized like any document's (``data convert`` prints the ``data build`` command).

For example::

    corpus = convert(load_records("train-v1.1.json"), "squad")
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from ..model.inputs import IMAGE_MARKER
from .records import Corpus, QAItem, read_rows

log = logging.getLogger(__name__)


def doc_id(text: str) -> str:
    """Documents are identified by their text: the same paragraph in two records is one document."""
    return hashlib.sha1(" ".join(text.split()).encode()).hexdigest()[:16]


def _add(corpus: Corpus, text: str, group: str) -> str:
    text = IMAGE_MARKER.sub(" ", text)  # a placeholder whose image is not here (seed 001's [IMAGE_REF: path])
    return corpus.add_doc(doc_id(text), " ".join(text.split()), group)


def _answers(value) -> tuple[str, ...]:
    """Answers from a string, a list, ``{"text": [...]}`` or ``[{"text": ...}]``; deduplicated, in order."""
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        value = [value]
    out = [a.get("text", "") if isinstance(a, dict) else a for a in value or []]
    return tuple(dict.fromkeys(" ".join(str(a).split()) for a in out if str(a).strip()))


def _add_item(corpus: Corpus, question, answers, positives, negatives=(), explanation=None) -> bool:
    question = " ".join(str(question or "").split())
    if not question or not answers or not positives:
        return False
    corpus.items.append(QAItem(question, tuple(answers), tuple(dict.fromkeys(positives)),
                               tuple(n for n in dict.fromkeys(negatives) if n not in positives), explanation))
    return True


# --------------------------------------------------------------------------- SQuAD


def _squad_flat(records: Iterable[dict]) -> Iterable[dict]:
    for record in records:
        if "paragraphs" in record:  # nested: one article
            for paragraph in record["paragraphs"]:
                for qa in paragraph.get("qas", []):
                    yield {"title": record.get("title", ""), "context": paragraph["context"], **qa}
        else:
            yield record


def from_squad(records: Iterable[dict]) -> Corpus:
    corpus, skipped = Corpus(), 0
    for record in _squad_flat(records):
        answers = _answers(record.get("answers"))
        if record.get("is_impossible") or not answers:
            skipped += 1
            continue
        title = record.get("title") or record["context"][:40]
        _add_item(corpus, record["question"], answers, [_add(corpus, record["context"], title)])
    if skipped:
        log.info("squad: %d unanswerable questions skipped", skipped)
    return corpus


# --------------------------------------------------------------------------- HotpotQA


def _hotpot_paragraphs(context) -> list[tuple[str, str]]:
    if isinstance(context, dict):  # Hugging Face layout
        return [(t, "".join(s)) for t, s in zip(context["title"], context["sentences"], strict=True)]
    return [(t, "".join(s)) for t, s in context]


def _hotpot_support(facts) -> set[str]:
    if isinstance(facts, dict):
        return set(facts["title"])
    return {title for title, _ in facts}


def from_hotpotqa(records: Iterable[dict]) -> Corpus:
    corpus = Corpus()
    for record in records:
        support = _hotpot_support(record.get("supporting_facts", []))
        positives, negatives = [], []
        for title, text in _hotpot_paragraphs(record["context"]):
            if not text.strip():
                continue
            doc = _add(corpus, f"{title}: {text}", title)
            (positives if title in support else negatives).append(doc)
        _add_item(corpus, record["question"], _answers(record.get("answer")), positives, negatives)
    return corpus


# --------------------------------------------------------------------------- MuSiQue


def from_musique(records: Iterable[dict]) -> Corpus:
    corpus, skipped = Corpus(), 0
    for record in records:
        if record.get("answerable") is False:
            skipped += 1
            continue
        positives, negatives = [], []
        for paragraph in record["paragraphs"]:
            title, text = paragraph.get("title", ""), paragraph.get("paragraph_text", "")
            if not text.strip():
                continue
            doc = _add(corpus, f"{title}: {text}" if title else text, title or text[:40])
            (positives if paragraph.get("is_supporting") else negatives).append(doc)
        answers = _answers([record.get("answer", ""), *(record.get("answer_aliases") or [])])
        skipped += not _add_item(corpus, record["question"], answers, positives, negatives)
    if skipped:
        log.info("musique: %d unanswerable or unsupported questions skipped", skipped)
    return corpus


# --------------------------------------------------------------------------- PubMedQA


def from_pubmedqa(records: Iterable[dict], answer: str = "decision") -> Corpus:
    """``answer``: ``"decision"`` (yes/no/maybe; ``long_answer`` is the stage1 target) or ``"long"``."""
    if answer not in ("decision", "long"):
        raise ValueError(f"pubmedqa answer must be 'decision' or 'long', got {answer!r}")
    corpus = Corpus()
    for record in records:
        context = record["context"] if "context" in record else record["CONTEXTS"]  # Hub layout, or the GitHub files
        if isinstance(context, dict):
            context = context["contexts"]
        text = " ".join(context) if isinstance(context, list) else str(context)
        pubid = str(record.get("pubid", record.get("id", doc_id(text))))
        long_answer = record.get("long_answer") or record.get("LONG_ANSWER")
        decision = record.get("final_decision") or record.get("answer")
        question = record.get("question") or record.get("QUESTION")
        if answer == "long":
            _add_item(corpus, question, _answers(long_answer), [_add(corpus, text, pubid)])
        else:
            _add_item(corpus, question, _answers(decision), [_add(corpus, text, pubid)], explanation=long_answer)
    return corpus


# --------------------------------------------------------------------------- MedQA


def _options(value) -> list[tuple[str, str]]:
    if isinstance(value, dict):  # {"A": "...", "B": ...}; Hugging Face fills missing letters with None
        return [(k, str(v)) for k, v in value.items() if v not in (None, "")]
    return [(o.get("key", ""), str(o.get("value", ""))) for o in value or []]  # bigbio: [{"key", "value"}]


def from_medqa(records: Iterable[dict]) -> Corpus:
    corpus, skipped = Corpus(), 0
    for record in records:
        options = _options(record.get("options"))
        answer = record.get("answer") or dict(options).get(record.get("answer_idx", ""), "")
        if not options or not str(answer).strip():
            skipped += 1
            continue
        text = "Options: " + " ".join(f"({k}) {v}" for k, v in options)
        group = doc_id(record["question"])
        _add_item(corpus, record["question"], _answers(answer), [_add(corpus, text, group)])
    if skipped:
        log.info("medqa: %d questions without options or answer skipped", skipped)
    return corpus


# --------------------------------------------------------------------------- Natural Questions


def _ctx_text(ctx: dict) -> tuple[str, str]:
    title = ctx.get("title", "")
    return (f"{title}: {ctx['text']}" if title else ctx["text"]), title


def _nq_simplified(record: dict) -> tuple[list[str], str | None, str]:
    """(answers, long-answer passage, title) from a simplified-NQ record (whitespace tokens)."""
    tokens = record["document_text"].split(" ")

    def span(start, end) -> str:
        return " ".join(t for t in tokens[start:end] if not re.fullmatch(r"</?[A-Za-z][^>]*>", t))

    answers, passage = [], None
    for annotation in record.get("annotations", []):
        long_answer = annotation.get("long_answer", {})
        if passage is None and long_answer.get("start_token", -1) >= 0:
            passage = span(long_answer["start_token"], long_answer["end_token"])
        answers += [span(s["start_token"], s["end_token"]) for s in annotation.get("short_answers", [])]
        if annotation.get("yes_no_answer") in ("YES", "NO"):
            answers.append(annotation["yes_no_answer"].lower())
    title = record.get("document_title") or record.get("document_url", "")
    return answers, passage, title


def _nq_hf(record: dict) -> tuple[list[str], str | None, str]:
    """The same from the Hugging Face ``natural_questions`` layout (token lists, dict-of-lists annotations)."""
    document, annotations = record["document"], record["annotations"]
    words, is_html = document["tokens"]["token"], document["tokens"]["is_html"]
    answers, passage = [], None
    for long_answer in annotations.get("long_answer", []):
        if passage is None and long_answer.get("start_token", -1) >= 0:
            span = range(long_answer["start_token"], long_answer["end_token"])
            passage = " ".join(words[i] for i in span if not is_html[i])
    for short in annotations.get("short_answers", []):
        answers += list(short.get("text", []))
    answers += [{1: "yes", 0: "no"}[v] for v in annotations.get("yes_no_answer", []) if v in (0, 1)]
    return answers, passage, document.get("title") or document.get("url", "")


def from_nq(records: Iterable[dict]) -> Corpus:
    corpus, skipped = Corpus(), 0
    for record in records:
        if "document_text" in record or "document" in record:
            simplified = "document_text" in record
            answers, passage, title = _nq_simplified(record) if simplified else _nq_hf(record)
            question = record.get("question_text") if simplified else record["question"]["text"]
            ok = passage is not None and _add_item(corpus, question, _answers(answers),
                                                   [_add(corpus, passage, title or passage[:40])])
        else:
            positives = [_add(corpus, *_ctx_text(c)) for c in record.get("positive_ctxs", [])[:1]]
            negatives = [_add(corpus, *_ctx_text(c)) for c in record.get("hard_negative_ctxs", [])
                         + record.get("negative_ctxs", [])]
            ok = _add_item(corpus, record.get("question"), _answers(record.get("answers", record.get("answer"))),
                           positives, negatives)
        skipped += not ok
    if skipped:
        log.info("nq: %d questions without a short answer or passage skipped", skipped)
    return corpus


# --------------------------------------------------------------------------- our synthesis


def from_synthesis(rows: Iterable[dict], ids: set[str] | None = None, where: str = "synth.jsonl") -> Corpus:
    """``synth.jsonl`` rows (only those whose chunk id is in ``ids``, if given). A chunk id used for
    two different documents is refused: the second's questions would be paired with the first's text."""
    corpus, first = Corpus(), {}
    for n, row in enumerate(rows, start=1):
        if ids is not None and row["id"] not in ids or not row.get("doc"):
            continue
        if row["id"] in first and corpus.docs[row["id"]] != row["doc"]:
            raise ValueError(f"{where}: row {n} has chunk id {row['id']!r}, which row {first[row['id']]} uses for "
                             "another document: its questions would be paired with the wrong text. Ids must be "
                             "unique: rerun `clara-lite data chunk` (or remove one of the rows) and synthesize again")
        first.setdefault(row["id"], n)
        doc = corpus.add_doc(row["id"], row["doc"], row["source"])
        if row.get("summary"):
            corpus.summaries[doc] = row["summary"]
        for pair in row.get("qa", []):
            _add_item(corpus, pair["question"], (pair["answer"],), [doc])
    return corpus


# --------------------------------------------------------------------------- other people's files


def _first_key(record: dict, keys: tuple[str, ...]):
    return next((record[k] for k in keys if k in record), None)


def from_seed001(records: Iterable[dict]) -> Corpus:
    corpus, skipped = Corpus(), 0
    for record in records:
        docs = _first_key(record, ("docs", "context", "content")) or []
        docs = [d for d in ([docs] if isinstance(docs, str) else docs) if isinstance(d, str) and d.strip()]
        answers = _answers(_first_key(record, ("gold_answer", "answer", "answers", "golden_answers")))
        if not docs or not answers:
            skipped += 1
            continue
        group = doc_id("\n".join(docs))  # a row's documents stay on one side of the split
        ids = [_add(corpus, d, group) for d in docs]
        pos = [i for i in record.get("pos_index") or range(len(ids)) if isinstance(i, int) and 0 <= i < len(ids)]
        positives = [ids[i] for i in pos] or ids
        skipped += not _add_item(corpus, record.get("question"), answers, positives, [d for d in ids if d not in positives])
    if skipped:
        log.info("seed001: %d rows without docs, question or answer skipped", skipped)
    return corpus


def from_instruction(records: Iterable[dict]) -> Corpus:
    corpus, skipped = Corpus(), 0
    for record in records:
        document = str(record.get("input") or "").strip()
        if not document:
            skipped += 1
            continue
        doc = _add(corpus, document, doc_id(document))
        skipped += not _add_item(corpus, record.get("instruction"), _answers(record.get("output")), [doc])
    if skipped:
        log.info("instruction: %d rows without an input (no document) or output skipped", skipped)
    return corpus


def instruction_outputs(records: Iterable[dict]) -> list[str]:
    """The outputs of instruction rows that have no input: documents to synthesize questions about."""
    return [str(r.get("output")).strip() for r in records
            if not str(r.get("input") or "").strip() and str(r.get("output") or "").strip()]


FORMATS: dict[str, Callable[..., Corpus]] = {
    "squad": from_squad, "hotpotqa": from_hotpotqa, "2wiki": from_hotpotqa, "musique": from_musique,
    "pubmedqa": from_pubmedqa, "medqa": from_medqa, "nq": from_nq, "synthesis": from_synthesis,
    "seed001": from_seed001, "instruction": from_instruction,
}


def convert(records: Iterable[dict], fmt: str, *, where: str = "the records", **options) -> Corpus:
    """``options`` go to the converter (``answer="long"`` for PubMedQA). A record whose fields have other
    types than the format's (a number for a question, a string for a list) is a ValueError naming
    ``where`` and the record's number, never the converter's TypeError."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    at = [0]

    def counted():
        for at[0], record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise ValueError(f"{where}, record {at[0]}: a {type(record).__name__}, not an object with fields")
            yield record

    try:
        corpus = FORMATS[fmt](counted(), **options)
    except (TypeError, AttributeError, KeyError, IndexError) as err:
        raise ValueError(f"{where}, record {at[0]}: not {fmt} data ({type(err).__name__}: {err}): a field holds "
                         "another type than the format's; fix the record, or pass the right --format") from None
    log.info("%s: %d documents, %d questions", fmt, len(corpus.docs), len(corpus.items))
    return corpus


def load_records(path: str | Path, limit: int = 0) -> list[dict]:
    """Records of a dataset file: JSONL, a JSON list, ``{"data": [...]}`` (SQuAD) or ``{id: record}`` (PubMedQA)."""
    path = Path(path)
    try:  # a whole-file JSON document first; "extra data" means JSON lines
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError:
        records = read_rows(path)
    else:
        if isinstance(value, dict) and isinstance(value.get("data"), list):
            value = value["data"]
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            value = [{"pubid": k, **v} for k, v in value.items()]
        records = value if isinstance(value, list) else [value]
    return records[:limit] if limit else records
