"""One row of a training file: its Python shape, and a parser that says exactly what is wrong with it.

Why strict: a bad row otherwise surfaces as a shape error deep inside a training step, hours in.
A parser collects ``(field, reason)`` problems instead of raising, so a file can be checked whole
(:mod:`clara_lite.model.data`). Like upstream, docs may sit under ``context``/``content`` and a stage2/3
answer under ``answer``/``answers``/``golden_answers`` (a string or a list of acceptable answers;
the first is the training target). Which stage reads which row is the stage registry's fact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA_TYPES = ("qa", "paraphrase")
DOC_KEYS = ("docs", "context", "content")  # upstream's preprocess_data looks in this order
ANSWER_KEYS = ("gold_answer", "answer", "answers", "golden_answers")
ROW = "<row>"  # field name for problems with the line as a whole
FILE = "<file>"  # field name for problems with the file as a whole (line 0)

STAGE1_SHAPE = ('{"data_type": "qa", "question": ["q1", ...], "answers": ["a1", ...], "docs": ["doc"]} '
                'or {"data_type": "paraphrase", "answers": ["paraphrase"], "docs": ["doc"]}')
QA_SHAPE = '{"question": "q", "docs": ["doc1", ...], "gold_answer": "a", "pos_index": [0]}'


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one line (``line`` is 1-based; 0 means the whole file)."""

    line: int
    field: str
    reason: str

    def format(self, path: str | Path) -> str:
        return f"{path}:{self.line}: field '{self.field}': {self.reason}"


@dataclass(frozen=True)
class Stage1Example:
    """A compression-pretraining row: QA pairs about the docs, or a paraphrase of them."""

    data_type: str  # "qa" or "paraphrase"
    questions: tuple[str, ...]  # empty for paraphrase rows
    answers: tuple[str, ...]  # qa: one per question; paraphrase: answers[0] is the target
    docs: tuple[str, ...]


@dataclass(frozen=True)
class QAExample:
    """A stage2/stage3 row: a question, its candidate docs and acceptable answers."""

    question: str
    docs: tuple[str, ...]
    answers: tuple[str, ...]  # every acceptable answer; answers[0] is the training target
    pos_index: tuple[int, ...] = ()  # indices into docs of the gold documents, if labelled

    @property
    def answer(self) -> str:
        return self.answers[0]


Example = Stage1Example | QAExample
_Out = list[tuple[str, str]]  # (field, reason) problems collected while parsing one row


def _kind(value: object) -> str:
    """JSON's name for a Python value's type, for messages about the file."""
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string"}
    return names.get(type(value), "list" if isinstance(value, list) else "object")


def _string_list(row: dict, key: str, out: _Out) -> tuple[str, ...] | None:
    """``row[key]`` as a non-empty list of non-empty strings, or None after recording why not."""
    if key not in row:
        out.append((key, "missing; expected a list of non-empty strings"))
        return None
    value = row[key]
    if not isinstance(value, list):
        out.append((key, f"expected a list of strings, got {_kind(value)}"))
        return None
    if not value:
        out.append((key, "empty list; needs at least one non-empty string"))
        return None
    bad = [
        f"item {i} is {_kind(v) if not isinstance(v, str) else 'empty'}"
        for i, v in enumerate(value)
        if not isinstance(v, str) or not v.strip()
    ]
    if bad:
        out.append((key, "; ".join(bad) + " (every item must be a non-empty string)"))
        return None
    return tuple(value)


def _docs(row: dict, out: _Out) -> tuple[str, ...] | None:
    key = next((k for k in DOC_KEYS if k in row), None)
    if key is None:
        out.append(("docs", "missing; expected a list of strings (also read from 'context', 'content')"))
        return None
    return _string_list(row, key, out)


def parse_stage1_row(row: dict, out: _Out) -> Stage1Example | None:
    data_type = row.get("data_type", "qa")  # upstream defaults a missing data_type to qa
    if data_type not in DATA_TYPES:
        out.append(("data_type", f"expected 'qa' or 'paraphrase', got {data_type!r}"))
        return None
    docs = _docs(row, out)
    answers = _string_list(row, "answers", out)
    questions: tuple[str, ...] | None = ()  # upstream ignores a paraphrase row's question
    if data_type == "qa":
        questions = _string_list(row, "question", out)
        if questions is not None and answers is not None and len(questions) != len(answers):
            out.append(("answers", f"{len(answers)} answers for {len(questions)} questions; must match"))
    if out:
        return None
    return Stage1Example(data_type, questions, answers, docs)


def _answers(row: dict, out: _Out) -> tuple[str, ...] | None:
    key = next((k for k in ANSWER_KEYS if k in row), None)
    if key is None:
        out.append(("gold_answer", f"missing; also looked for {', '.join(map(repr, ANSWER_KEYS[1:]))}"))
        return None
    value = row[key]
    if isinstance(value, str):
        if not value.strip():
            out.append((key, "empty string; the answer is the training target"))
            return None
        return (value,)
    if isinstance(value, list):
        return _string_list(row, key, out)
    out.append((key, f"expected a string or a list of strings, got {_kind(value)}"))
    return None


def _pos_index(row: dict, docs: tuple[str, ...] | None, out: _Out) -> tuple[int, ...] | None:
    value = row.get("pos_index")
    if value is None:
        return ()
    if not isinstance(value, list):
        out.append(("pos_index", f"expected a list of document indices, got {_kind(value)}"))
        return None
    bad = [f"item {i} is {_kind(v)}" for i, v in enumerate(value) if type(v) is not int]
    if docs is not None:
        n = len(docs)
        bad += [f"index {v} out of range for {n} docs" for v in value if type(v) is int and not 0 <= v < n]
    if bad:
        out.append(("pos_index", "; ".join(bad)))
        return None
    return tuple(value)


def parse_qa_row(row: dict, out: _Out) -> QAExample | None:
    question = row.get("question")
    if "question" not in row:
        out.append(("question", "missing; expected a non-empty string"))
    elif not isinstance(question, str):
        out.append(("question", f"expected a string, got {_kind(question)}"))
    elif not question.strip():
        out.append(("question", "empty string"))
    docs = _docs(row, out)
    answers = _answers(row, out)
    pos_index = _pos_index(row, docs, out)
    if out:
        return None
    return QAExample(question, docs, answers, pos_index)
