"""Read upstream CLaRa JSONL files as they are, and say exactly which lines are wrong.

Why strict and exhaustive: a bad row otherwise surfaces as a shape error deep inside a training
step, hours in. ``read_jsonl`` checks every line and lists every problem at once, as
``file:line: field 'x': reason``, so one edit pass fixes the file. Stage names are plain strings
only here, at the edge where foreign files come in.

One JSON object per line (shapes in ``_SHAPES``), blank lines ignored. Like upstream, docs may sit
under ``context``/``content`` and a stage2/3 answer under ``answer``/``answers``/``golden_answers``
(a string or a list of acceptable answers; the first is the training target).
"""

from __future__ import annotations

import codecs
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2", "stage3")
DATA_TYPES = ("qa", "paraphrase")
DOC_KEYS = ("docs", "context", "content")  # upstream's preprocess_data looks in this order
ANSWER_KEYS = ("gold_answer", "answer", "answers", "golden_answers")
ROW = "<row>"  # field name for problems with the line as a whole
FILE = "<file>"  # field name for problems with the file as a whole (line 0)

_SHAPES = {
    "stage1": '{"data_type": "qa", "question": ["q1", ...], "answers": ["a1", ...], "docs": ["doc"]} '
    'or {"data_type": "paraphrase", "answers": ["paraphrase"], "docs": ["doc"]}',
    "stage2": '{"question": "q", "docs": ["doc1", ...], "gold_answer": "a", "pos_index": [0]}',
}
_SHAPES["stage3"] = _SHAPES["stage2"]


class DataError(ValueError):
    """A data file with bad rows; ``problems`` holds every one of them."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


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


def _parse_stage1(row: dict, out: _Out) -> Stage1Example | None:
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


def _parse_qa(row: dict, out: _Out) -> QAExample | None:
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


_PARSERS = {"stage1": _parse_stage1, "stage2": _parse_qa, "stage3": _parse_qa}


@dataclass
class _Scan:
    examples: list[tuple[int, Example]] = field(default_factory=list)  # (line, example)
    problems: list[Problem] = field(default_factory=list)
    n_rows: int = 0


def _scan(path: str | Path, stage: str) -> _Scan:
    """Parse every line, collecting good examples and every problem; raises only for I/O."""
    if stage not in _PARSERS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path} (check the path; cwd is {Path.cwd()})")
    parse, scan = _PARSERS[stage], _Scan()
    # Bytes, not text: one line with bad UTF-8 becomes a problem instead of aborting the read.
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # files saved by Windows editors
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                scan.n_rows += 1
                scan.problems.append(Problem(lineno, ROW, f"not valid UTF-8 at byte offset {err.start}"))
                continue
            if not text.strip():
                continue
            scan.n_rows += 1
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                scan.problems.append(Problem(lineno, ROW, f"invalid JSON: {err.msg} at column {err.colno}"))
                continue
            if not isinstance(row, dict):
                scan.problems.append(Problem(lineno, ROW, f"expected a JSON object, got {_kind(row)}"))
                continue
            out: _Out = []
            example = parse(row, out)
            scan.problems.extend(Problem(lineno, f, r) for f, r in out)
            if example is not None:
                scan.examples.append((lineno, example))
    if scan.n_rows == 0:
        scan.problems.append(Problem(0, FILE, "no rows; the file is empty or only blank lines"))
    return scan


def read_jsonl(path: str | Path, stage: str) -> list[Example]:
    """All examples of an upstream JSONL file, or a ``DataError`` listing every bad line.

    >>> read_jsonl("pretrain.jsonl", "stage1")[0].data_type  # doctest: +SKIP
    'qa'
    """
    scan = _scan(path, stage)
    if scan.problems:
        bad = len({p.line for p in scan.problems if p.line})
        lines = "\n".join(p.format(path) for p in scan.problems)
        raise DataError(
            f"{path}: {bad} of {scan.n_rows} rows are not valid {stage} rows:\n{lines}\n"
            f"Fix or remove these lines. A {stage} line looks like: {_SHAPES[stage]}",
            scan.problems,
        )
    log.info("read %d %s examples from %s", len(scan.examples), stage, path)
    return [example for _, example in scan.examples]


@dataclass
class ValidationReport:
    """What ``validate_file`` found: counts over the good rows and every problem."""

    path: str
    stage: str
    n_rows: int  # non-blank lines
    n_bad: int  # lines with at least one problem (file-level problems are line 0, not counted)
    problems: list[Problem]
    docs_per_row: dict[int, int]  # number of docs -> number of rows
    data_types: dict[str, int]  # "qa"/"paraphrase" -> rows (stage2/3 rows are all "qa")
    n_questions: int  # questions over good rows (a stage1 qa row holds several)
    n_with_pos_index: int  # good rows with a non-empty pos_index
    top_k: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """Counts first, then one ``file:line: field 'x': reason`` line per problem."""
        docs = ", ".join(f"{n} docs: {rows} rows" for n, rows in self.docs_per_row.items()) or "none"
        types = ", ".join(f"{t}: {rows}" for t, rows in self.data_types.items()) or "none"
        lines = [
            f"{self.path} ({self.stage}{'' if self.top_k is None else f', top_k={self.top_k}'}): "
            f"{self.n_rows} rows, {self.n_bad} bad",
            f"  docs per row: {docs}",
            f"  data types: {types}",
            f"  questions: {self.n_questions}; rows with pos_index: {self.n_with_pos_index}",
        ]
        if self.problems:
            lines.append(f"{len(self.problems)} problems:")
            lines += [p.format(self.path) for p in self.problems]
            lines.append(f"Fix or remove these lines. A {self.stage} line looks like: {_SHAPES[self.stage]}")
            lines += [hint] if (hint := foreign_shape_hint(self.path, self.stage)) else []
        return "\n".join(lines)


def foreign_shape_hint(path: str | Path, stage: str) -> str | None:
    """How to convert ``path`` when its first row is another tool's shape that ``data convert`` reads.

    Seed 001 writes one ``{"question", "docs", "gold_answer"}`` file for every stage (valid for
    stage2/3, not stage1); seed 002 writes ``{"instruction", "input", "output"}`` rows."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            row = json.loads(next(line for line in fh if line.strip()))
    except (OSError, StopIteration, ValueError):
        return None
    keys = set(row) if isinstance(row, dict) else set()
    if {"instruction", "output"} <= keys:
        fmt, shape = "instruction", "instruction/input/output rows"
    elif stage == "stage1" and "data_type" not in keys and isinstance(row.get("question"), str) \
            and keys & set(DOC_KEYS) and keys & set(ANSWER_KEYS):
        fmt, shape = "seed001", "question/docs/gold_answer rows (one file for every stage)"
    else:
        return None
    return (f"{path} holds {shape}: `clara-lite data convert --format {fmt} --input {path} --out-dir DIR` "
            "writes stage1/2/3 files from it")


def _top_k_problems(examples: list[tuple[int, Example]], stage: str, top_k: int) -> list[Problem]:
    """Rows whose doc count does not fit a batch of ``top_k`` docs per question."""
    problems, flagged = [], set()
    for line, ex in examples:
        n = len(ex.docs)
        if stage == "stage1" and n != top_k:  # upstream's stage1 collate asserts exactly top_k
            problems.append(Problem(line, "docs", f"{n} docs but top_k={top_k}; stage1 needs exactly top_k"))
            flagged.add(line)
        elif stage != "stage1" and n < top_k:
            problems.append(Problem(line, "docs", f"only {n} docs but top_k={top_k} needs at least {top_k}"))
            flagged.add(line)
    counts = Counter(len(ex.docs) for _, ex in examples)
    if len(counts) > 1:
        usual = counts.most_common(1)[0][0]
        problems += [
            Problem(line, "docs", f"{len(ex.docs)} docs, most rows have {usual}; batches need equal counts")
            for line, ex in examples
            if len(ex.docs) != usual and line not in flagged
        ]
    return problems


def validate_file(path: str | Path, stage: str, top_k: int | None = None) -> ValidationReport:
    """Check a data file without raising for bad rows; ``top_k`` also checks doc counts.

    >>> print(validate_file("train.jsonl", "stage2", top_k=5).format())  # doctest: +SKIP
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scan = _scan(path, stage)
    problems = scan.problems
    if top_k is not None:
        problems = sorted(problems + _top_k_problems(scan.examples, stage, top_k), key=lambda p: p.line)
    examples = [ex for _, ex in scan.examples]
    data_types = Counter(getattr(ex, "data_type", "qa") for ex in examples)  # stage2/3 rows are qa
    n_questions = sum(len(ex.questions) if isinstance(ex, Stage1Example) else 1 for ex in examples)
    return ValidationReport(
        path=str(path),
        stage=stage,
        n_rows=scan.n_rows,
        n_bad=len({p.line for p in problems if p.line}),
        problems=problems,
        docs_per_row=dict(sorted(Counter(len(ex.docs) for ex in examples).items())),
        data_types=dict(sorted(data_types.items())),
        n_questions=n_questions,
        n_with_pos_index=sum(1 for ex in examples if getattr(ex, "pos_index", ())),
        top_k=top_k,
    )
