"""Closed-book, text RAG and CLaRa answering the same questions, scored the same way.

Why: a trained CLaRa model is worth having only if it answers from its compressed documents better
than the same base model without them (closed-book); how close it comes to that base model reading
the documents' text (text RAG) is what compression costs. CLaRa with every memory vector zeroed is the
control that shows the answers come from the memory and not from the question or the answer style the
decoder learned.

Systems (:data:`SYSTEMS`), all on one :class:`~clara_lite.model.modeling.ClaraModel`:

- ``closed-book``: the base model (no adapter active), the question alone;
- ``text-rag``: the base model (no adapter active), the documents' text in the prompt;
- ``text-rag-endpoint``: the RAG a user runs today: their chat model behind an OpenAI-compatible endpoint reading
  the same documents' text in the same prompt (:mod:`.endpoint`);
- ``clara``: the trained adapters, documents compressed into memory vectors (a model with a query
  reasoner picks its top-k among the candidates itself);
- ``clara-zeroed``: ``clara``'s prompts with every memory vector set to zero (read in the model's
  ``memory_space``: a constant that carries nothing of any document).

Settings (:data:`SETTINGS`):

- ``oracle``: each question reads its own row's documents, gold ones first, cut to top-k (a model with a
  query reasoner chooses top-k among all of the row's documents);
- ``normal``: each question reads the top-k documents a retriever finds in a pool (by default every
  document of the rows); the retriever is passed in (BM25, an embedding index), so this module holds no
  index of its own.

For example::

    result = compare(model, rows, ["closed-book", "text-rag", "clara"], setting="oracle")
    print(markdown_table(result))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..model import inputs
from ..model.evaluation import evaluate, paired_bootstrap, per_question, recovered_share
from ..model.teacher import answer_plain
from .endpoint import describe_endpoint, endpoint_answers

log = logging.getLogger(__name__)

CLOSED_BOOK, TEXT_RAG, CLARA, CLARA_ZEROED = "closed-book", "text-rag", "clara", "clara-zeroed"
TEXT_RAG_ENDPOINT = "text-rag-endpoint"
SYSTEMS = (CLOSED_BOOK, TEXT_RAG, CLARA, CLARA_ZEROED, TEXT_RAG_ENDPOINT)
LOCAL_SYSTEMS = SYSTEMS[:4]  # what one model answers alone (the endpoint needs its URL and model)
ENDPOINT_FLAGS = ("--endpoint URL --endpoint-model NAME (any OpenAI-compatible server: Ollama "
                  "http://localhost:11434/v1, vLLM http://HOST:8000/v1)")
ORACLE, NORMAL = "oracle", "normal"
SETTINGS = (ORACLE, NORMAL)

# questions x k -> pool indices of each question's k best documents, best first
Retriever = Callable[[Sequence[str], int], list[list[int]]]


@dataclass
class Comparison:
    """Every system's scores and answers on the same questions."""

    setting: str
    top_k: int
    questions: list[str]
    golds: list[list[str]]
    scores: dict[str, dict] = field(default_factory=dict)  # system -> em, f1, cover_em, count, recall_at_k, ...
    predictions: dict[str, list[str]] = field(default_factory=dict)  # system -> one answer per question
    read: dict[str, list[list[str]]] = field(default_factory=dict)  # system -> the documents each question read
    info: dict = field(default_factory=dict)  # what was compared: model, data, ...
    recovery: dict | None = None  # :func:`recovery`, set by :func:`compare`

    @property
    def count(self) -> int:
        return len(self.questions)

    def to_dict(self) -> dict:
        """JSON-ready; ``systems`` is a list in the order compared (JSON objects are written sorted)."""
        return {"setting": self.setting, "top_k": self.top_k, "count": self.count, **self.info,
                "systems": [{"system": name, **scores} for name, scores in self.scores.items()],
                **({"recovery": self.recovery} if self.recovery else {})}


RECOVERY_METRICS = ("f1", "cover_em", "em")


def recovery(result: Comparison, system: str = CLARA) -> dict | None:
    """What ``system`` recovers of text RAG's gain over closed-book, per metric, with 95% paired bootstrap
    intervals: ``{metric: {"share": [x, lo, hi], "over_closed_book": [d, lo, hi], "over_zeroed": [d, lo, hi]}}``
    (the last where ``clara-zeroed`` ran; a share is None where reading adds nothing). None unless closed-book,
    text RAG and ``system`` answered. Scores are recomputed per question from the answers, so a result read back
    works too.

    Why: CLaRa's compressed memory can at best give what the text itself gives; the share says how much of
    that the compression keeps, and the zeroed control whether it comes from the memory at all."""
    have = result.predictions
    if not {CLOSED_BOOK, TEXT_RAG, system} <= set(have):
        return None
    scored = {name: per_question(have[name], result.golds) for name in (CLOSED_BOOK, TEXT_RAG, CLARA_ZEROED, system)
              if name in have}
    out = {}
    for key in RECOVERY_METRICS:
        closed, mine = scored[CLOSED_BOOK][key], scored[system][key]
        share = recovered_share(closed, scored[TEXT_RAG][key], mine)
        row = {"share": [None if x != x else x for x in share],  # NaN (nothing to share) as None: JSON has no NaN
               "over_closed_book": list(paired_bootstrap(closed, mine))}
        if CLARA_ZEROED in scored and system != CLARA_ZEROED:
            row["over_zeroed"] = list(paired_bootstrap(scored[CLARA_ZEROED][key], mine))
        out[key] = row
    return out


def parse_systems(text: str | Sequence[str]) -> list[str]:
    """``"closed-book,clara"`` -> ``["closed-book", "clara"]``; an unknown name is a clear error."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names:
        raise ValueError(f"unknown system(s) {unknown or names}: choose from {', '.join(SYSTEMS)}")
    return list(dict.fromkeys(names))


def _gold_first(row, k: int) -> list[str]:
    """The row's documents with its gold ones first, cut to ``k``."""
    order = list(dict.fromkeys(i for i in row.pos_index if 0 <= i < len(row.docs)))
    order += [i for i in range(len(row.docs)) if i not in order]
    return [row.docs[i] for i in order[: min(k, len(order))]]


def _recall(rows, read: list[list[str]]) -> float | None:
    """Mean share of each question's gold documents among what it read (questions with gold ones only)."""
    shares = []
    for row, docs in zip(rows, read, strict=True):
        gold = {row.docs[i] for i in row.pos_index if 0 <= i < len(row.docs)}
        if gold:
            shares.append(len(gold & set(docs)) / len(gold))
    return sum(shares) / len(shares) if shares else None


def reading_sets(rows, setting: str, k: int, retriever: Retriever | None = None,
                 pool: Sequence[str] | None = None) -> list[list[str]]:
    """The documents each question reads in ``setting`` (see the module doc)."""
    if setting == ORACLE:
        return [_gold_first(row, k) for row in rows]
    if setting != NORMAL:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if retriever is None:
        raise ValueError("the normal setting retrieves from a pool: pass a retriever (e.g. BM25 over the pool)")
    pool = list(pool) if pool is not None else list(dict.fromkeys(d for row in rows for d in row.docs))
    hits = retriever([row.question for row in rows], k)
    return [[pool[i] for i in found] for found in hits]


def _same_size_batches(sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Question indices in batches whose questions read the same number of documents (a batch's prompts
    need it), in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(sizes):
        groups.setdefault(n, []).append(i)
    return [idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]


def _run_text(model, rows, read, with_docs: bool, batch_size: int, max_new_tokens: int):
    answers, tokens = [""] * len(rows), [0] * len(rows)
    for batch in _same_size_batches([len(d) if with_docs else 0 for d in read], batch_size):
        pairs = [inputs.text_answer_prompt(model.tokenizer, rows[i].question, read[i] if with_docs else ())
                 for i in batch]
        for i, text in zip(batch, answer_plain(model, [p[1] for p in pairs], max_new_tokens), strict=True):
            answers[i] = text
        for i, (n, _) in zip(batch, pairs, strict=True):
            tokens[i] = n
    return answers, tokens, [list(d) for d in read] if with_docs else [[] for _ in rows]


def _run_clara(model, rows, read, zeroed: bool, setting: str, k: int, batch_size: int, max_new_tokens: int):
    """CLaRa's answers (or the zeroed-memory control's), prompt lengths and the documents read."""
    answers, tokens, used = [""] * len(rows), [0] * len(rows), [list(d) for d in read]
    choose = model.has_retriever and setting == ORACLE  # the query reasoner picks among the row's candidates
    sizes = [len(r.docs) if choose else len(d) for r, d in zip(rows, read, strict=True)]
    hidden = model.lm.get_input_embeddings().weight.shape[1]
    for batch in _same_size_batches(sizes, batch_size):
        questions = [rows[i].question for i in batch]
        n = min(k, sizes[batch[0]]) if choose else sizes[batch[0]]
        if zeroed:  # nothing compressed: the decoder sees only the question and empty slots
            memory = torch.zeros(len(batch) * n, model.config.n_mem, hidden, device=model.device,
                                 dtype=model.lm.get_input_embeddings().weight.dtype)
            texts = model.generate_from_compressed_documents_and_questions(questions, memory, max_new_tokens, n)
        elif choose:
            texts, idx = model.generate_from_questions(questions, [list(rows[i].docs) for i in batch],
                                                       max_new_tokens, top_k=n)
            for i, picked in zip(batch, idx.tolist(), strict=True):
                used[i] = [rows[i].docs[j] for j in picked]
        else:
            texts = model.generate_from_text(questions, [read[i] for i in batch], max_new_tokens)
        for i, text in zip(batch, texts, strict=True):
            answers[i] = text
            tokens[i] = inputs.answer_prompt(model.tokenizer, model.tokens, rows[i].question, n)[0]
    return answers, tokens, used


def compare(model, rows, systems: Sequence[str] = LOCAL_SYSTEMS, *, setting: str = ORACLE,
            top_k: int | None = None, retriever: Retriever | None = None, pool: Sequence[str] | None = None,
            batch_size: int = 8, max_new_tokens: int = 32, info: dict | None = None, endpoint=None) -> Comparison:
    """Answer ``rows`` (stage2/3 examples) with each of ``systems`` and score them: EM, F1, cover-EM,
    Recall@k (where documents were retrieved), mean prompt tokens and seconds per question. ``endpoint``
    (:func:`.endpoint.open_endpoint`) answers as ``text-rag-endpoint``."""
    systems = parse_systems(systems)
    if not rows:
        raise ValueError("no questions to compare on")
    if TEXT_RAG_ENDPOINT in systems and endpoint is None:
        raise ValueError(f"{TEXT_RAG_ENDPOINT} needs an endpoint: {ENDPOINT_FLAGS}")
    if endpoint is not None and TEXT_RAG_ENDPOINT not in systems:
        raise ValueError(f"an endpoint is given but the systems do not name {TEXT_RAG_ENDPOINT}")
    k = top_k or model.config.generation_top_k
    read = reading_sets(rows, setting, k, retriever, pool)
    result = Comparison(setting=setting, top_k=k, questions=[r.question for r in rows],
                        golds=[list(r.answers) for r in rows], info=dict(info or {}))
    if endpoint is not None:
        result.info["endpoint"] = describe_endpoint(endpoint)
    for name in systems:
        start = time.perf_counter()
        if name == TEXT_RAG_ENDPOINT:  # text-rag's documents and prompt, another model
            answers, tokens = endpoint_answers(endpoint, result.questions, read, max_new_tokens)
            used = [list(d) for d in read]
        elif name in (CLOSED_BOOK, TEXT_RAG):
            answers, tokens, used = _run_text(model, rows, read, name == TEXT_RAG, batch_size, max_new_tokens)
        else:
            answers, tokens, used = _run_clara(model, rows, read, name == CLARA_ZEROED, setting, k, batch_size,
                                               max_new_tokens)
        seconds = time.perf_counter() - start
        scores = evaluate(answers, result.golds)
        retrieved = setting == NORMAL or (name == CLARA and model.has_retriever)
        recall = _recall(rows, used) if retrieved and name != CLOSED_BOOK else None
        scores.update(recall_at_k=recall, prompt_tokens=sum(tokens) / len(tokens) if tokens is not None else None,
                      seconds_per_question=seconds / len(rows))
        result.scores[name], result.predictions[name], result.read[name] = scores, answers, used
        log.info("%s (%s, top-%d): EM %.3f F1 %.3f over %d questions, %.2f s each", name, setting, k, scores["em"],
                 scores["f1"], len(rows), scores["seconds_per_question"])
    result.recovery = recovery(result)
    return result
