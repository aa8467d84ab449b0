"""Training files: read a JSONL whole, or check it and say exactly which lines are wrong.

``read_jsonl`` checks every line and lists every problem at once, as ``file:line: field 'x':
reason``, so one edit pass fixes the file. One JSON object per line, blank lines ignored; what a
row looks like is :mod:`clara_lite.rows`, which stage reads which row is :mod:`clara_lite.stages`.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .rows import (  # noqa: F401  (re-exported: the names data files are about)
    ANSWER_KEYS,
    DOC_KEYS,
    FILE,
    ROW,
    Example,
    Problem,
    QAExample,
    Stage1Example,
    _kind,
    _Out,
)
from .stages import Stage, get_stage

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file with bad rows; ``problems`` holds every one of them."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass
class _Scan:
    examples: list[tuple[int, Example]] = field(default_factory=list)  # (line, example)
    problems: list[Problem] = field(default_factory=list)
    n_rows: int = 0


def _scan(path: str | Path, stage: Stage) -> _Scan:
    """Parse every line, collecting good examples and every problem; raises only for I/O."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path} (check the path; cwd is {Path.cwd()})")
    parse, scan = stage.parse_row, _Scan()
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


def read_jsonl(path: str | Path, stage: str | Stage) -> list[Example]:
    """All examples of an upstream JSONL file, or a ``DataError`` listing every bad line.

    >>> read_jsonl("pretrain.jsonl", "stage1")[0].data_type  # doctest: +SKIP
    'qa'
    """
    stage = get_stage(stage)
    scan = _scan(path, stage)
    if scan.problems:
        bad = len({p.line for p in scan.problems if p.line})
        lines = "\n".join(p.format(path) for p in scan.problems)
        raise DataError(
            f"{path}: {bad} of {scan.n_rows} rows are not valid {stage.name} rows:\n{lines}\n"
            f"Fix or remove these lines. A {stage.name} line looks like: {stage.row_shape}",
            scan.problems,
        )
    log.info("read %d %s examples from %s", len(scan.examples), stage.name, path)
    return [example for _, example in scan.examples]


def questions_of(examples) -> list[QAExample]:
    """Examples as questions to answer: stage2/3 rows as they are; each QA pair of a stage1 ``qa`` row as a
    question over that row's documents (paraphrase rows have none). Held-out evaluation and comparisons
    score every stage on questions."""
    rows = []
    for ex in examples:
        if isinstance(ex, QAExample):
            rows.append(ex)
        elif ex.data_type == "qa":
            gold = tuple(range(len(ex.docs)))
            rows += [QAExample(q, ex.docs, (a,), gold) for q, a in zip(ex.questions, ex.answers, strict=True)]
    return rows


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
            lines.append(f"Fix or remove these lines. A {self.stage} line looks like: "
                         f"{get_stage(self.stage).row_shape}")
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
    elif get_stage(stage).row == "pretrain" and "data_type" not in keys and isinstance(row.get("question"), str) \
            and keys & set(DOC_KEYS) and keys & set(ANSWER_KEYS):
        fmt, shape = "seed001", "question/docs/gold_answer rows (one file for every stage)"
    else:
        return None
    return (f"{path} holds {shape}: `clara-lite data convert --format {fmt} --input {path} --out-dir DIR` "
            "writes stage1/2/3 files from it")


def _top_k_problems(examples: list[tuple[int, Example]], stage: Stage, top_k: int) -> list[Problem]:
    """Rows whose doc count does not fit a batch of ``top_k`` docs per question."""
    problems, flagged = [], set()
    for line, ex in examples:
        n = len(ex.docs)
        if stage.exact_docs and n != top_k:  # upstream's stage1 collate asserts exactly top_k
            problems.append(Problem(line, "docs", f"{n} docs but top_k={top_k}; {stage.name} needs exactly top_k"))
            flagged.add(line)
        elif not stage.exact_docs and n < top_k:
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


def validate_file(path: str | Path, stage: str | Stage, top_k: int | None = None) -> ValidationReport:
    """Check a data file without raising for bad rows; ``top_k`` also checks doc counts.

    >>> print(validate_file("train.jsonl", "stage2", top_k=5).format())  # doctest: +SKIP
    """
    stage = get_stage(stage)
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
        stage=stage.name,
        n_rows=scan.n_rows,
        n_bad=len({p.line for p in problems if p.line}),
        problems=problems,
        docs_per_row=dict(sorted(Counter(len(ex.docs) for ex in examples).items())),
        data_types=dict(sorted(data_types.items())),
        n_questions=n_questions,
        n_with_pos_index=sum(1 for ex in examples if getattr(ex, "pos_index", ())),
        top_k=top_k,
    )
