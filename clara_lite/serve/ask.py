"""Asking a trained model: load a zip or folder, read documents from disk, answer questions.

The one answering path of the CLI (``clara-lite ask``) and the notebooks (05_inference): a model
with a query reasoner (stage3) retrieves the top-k documents, others read every document.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..model.modeling import ClaraModel
from .documents import document_text, documents_from, jsonl_documents, skip_entry

log = logging.getLogger(__name__)

MAX_DOCS_WITHOUT_RETRIEVER = 16


@dataclass
class Answer:
    question: str
    text: str
    retrieved: list[int] | None  # indices into the documents, best first; None when all were read


def load(path, **kwargs) -> ClaraModel:
    """``ClaraModel.from_pretrained`` for a zip or folder, naming the base model when it is missing."""
    return ClaraModel.from_pretrained(path, **kwargs)


def read_docs(path) -> list[str]:
    """Documents from a folder (recursively, by name, one each: .txt/.md as written; PDF, DOCX, PPTX, HTML
    through the index's readers, a file whose reader is missing skipped with the package to install) or a
    JSONL file in any form :func:`~clara_lite.serve.documents.documents_from` reads (``{"text"|"doc": ...}``,
    a JSON string, training rows' docs). Repeats dropped.

    For example::

        read_docs("data/stage3.jsonl")[:1]
        # -> ['Ada lives in Paris.']
    """
    path = Path(path)
    if path.is_dir():  # .txt/.md as written; PDF, DOCX, PPTX, HTML through the index's readers
        docs = []
        for doc in documents_from(path):
            if doc.path.suffix.lower() in (".txt", ".md"):
                docs.append(doc.path.read_text(encoding="utf-8"))
                continue
            try:
                docs.append(document_text(doc.pages()))
            except Exception as err:  # unreadable, or its reader not installed: said, and the others read
                log.warning("skipped %s: %s", doc.source, skip_entry(doc, err)["reason"])
    elif path.is_file():
        docs = [d.text for d in jsonl_documents(path)]
    else:
        raise FileNotFoundError(f"documents not found: {path} (a .jsonl file or a folder of documents)")
    docs = list(dict.fromkeys(d.strip() for d in docs if d.strip()))
    if not docs:
        raise ValueError(f"no documents in {path}")
    return docs


def answer_many(model, questions: list[str], docs: list[str], *, top_k: int | None = None,
                max_new_tokens: int = 64) -> list[Answer]:
    """Answer every question over the same ``docs``: retrieve the top-k first when the model has a
    query reasoner (stage3), else read all of them (at most ``MAX_DOCS_WITHOUT_RETRIEVER``)."""
    questions = list(questions)
    if not questions:
        return []
    if model.has_retriever:
        texts, idx = model.generate_from_questions(questions, [docs] * len(questions), max_new_tokens=max_new_tokens,
                                                   top_k=top_k)
        return [Answer(q, t, i) for q, t, i in zip(questions, texts, idx.tolist(), strict=True)]
    if len(docs) > MAX_DOCS_WITHOUT_RETRIEVER:
        raise ValueError(f"{len(docs)} documents, but a model without a retriever (query_reasoner) reads all of "
                         f"them at once (at most {MAX_DOCS_WITHOUT_RETRIEVER}): pass fewer documents, or use a "
                         "stage3 model, which retrieves the top-k")
    texts = model.generate_from_text(questions, [docs] * len(questions), max_new_tokens=max_new_tokens)
    return [Answer(q, t, None) for q, t in zip(questions, texts, strict=True)]


def answer(model, question: str, docs: list[str], *, top_k: int | None = None,
           max_new_tokens: int = 64) -> tuple[str, list[int] | None]:
    """Answer ``question`` from ``docs`` -> (answer, indices of the retrieved docs, or None when all
    were read)."""
    one = answer_many(model, [question], docs, top_k=top_k, max_new_tokens=max_new_tokens)[0]
    return one.text, one.retrieved
