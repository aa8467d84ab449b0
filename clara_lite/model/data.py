"""Training files: read a JSONL whole, or check it and say exactly which lines are wrong.

``read_jsonl`` checks every line and lists every problem at once, as ``file:line: field 'x':
reason``, so one edit pass fixes the file. One JSON object per line, blank lines ignored; what a
row looks like is :mod:`clara_lite.model.rows`, which stage reads which row is :mod:`clara_lite.model.stages`.

Beyond a row's shape, a row can still stop training hours in, at the step that batches it:
text a tokenizer cannot read (an unpaired surrogate), a memory token typed into the text, rows
with unequal document counts in one batch, memory slots or a question that leave the decoder no
room for the answer. ``validate_file`` and :func:`check_training_file` (the trainer's pre-flight)
find those too, each with its line and the option that would make it fit.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.config import ClaraConfig
from ..core.errors import ClaraError
from .inputs import IMAGE_MARKER, RESERVED_TOKENS
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


class DataError(ClaraError, ValueError):
    """A data file with bad rows; ``problems`` holds every one of them."""
    code = "bad_data"

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
            except RecursionError:
                scan.problems.append(Problem(lineno, ROW, "JSON nested too deeply to read (a training row is "
                                                          "one flat object)"))
                continue
            except ValueError as err:  # e.g. a number of more than 4,300 digits
                scan.problems.append(Problem(lineno, ROW, f"unreadable value: {err}"))
                continue
            if not isinstance(row, dict):
                scan.problems.append(Problem(lineno, ROW, f"expected a JSON object, got {_kind(row)}"))
                continue
            out: _Out = []
            example = parse(row, out)
            if example is not None:
                _text_problems(example, out)
            scan.problems.extend(Problem(lineno, f, r) for f, r in out)
            if example is not None and not out:
                scan.examples.append((lineno, example))
    if scan.n_rows == 0:
        scan.problems.append(Problem(0, FILE, "no rows; the file is empty or only blank lines"))
    return scan


_SURROGATE = re.compile("[\ud800-\udfff]")


def _texts(example: Example) -> list[tuple[str, tuple[str, ...]]]:
    if isinstance(example, Stage1Example):
        return [("question", example.questions), ("answers", example.answers), ("docs", example.docs)]
    return [("question", (example.question,)), ("answers", example.answers), ("docs", example.docs)]


def _text_problems(example: Example, out: _Out) -> None:
    """Text that parses as JSON but breaks tokenizing: unpaired surrogates, our reserved tokens."""
    for name, texts in _texts(example):
        for i, text in enumerate(texts):
            where = f"{name}[{i}]" if len(texts) > 1 or name in ("docs", "answers") else name
            if bad := _SURROGATE.search(text):
                out.append((where, f"an unpaired surrogate (\\u{ord(bad.group()):04x}) at character {bad.start()}: "
                                   "not text a tokenizer can read; write the character itself, or a valid "
                                   "\\ud83d\\ude00-style pair"))
            if marker := IMAGE_MARKER.search(text):
                out.append((where, f"holds an image placeholder {marker.group()[:60]!r}, not text: `clara-lite data "
                                   "convert` drops them, or `clara-lite data build` describes the images"))
            if token := RESERVED_TOKENS.search(text):
                out.append((where, f"contains {token.group()!r}, a token clara_lite reserves for memory slots "
                                   "(the prompt would count it as one): remove or rewrite it"))


def read_jsonl(path: str | Path, stage: str | Stage) -> list[Example]:
    """All examples of an upstream JSONL file, or a ``DataError`` listing every bad line.

    For example::

        read_jsonl("pretrain.jsonl", "stage1")[0].data_type
        # -> 'qa'
    """
    stage = get_stage(stage)
    scan = _scan(path, stage)
    if scan.problems:
        bad = len({p.line for p in scan.problems if p.line})
        lines = "\n".join(p.format(path) for p in scan.problems)
        raise DataError(f"{path}: {bad} of {scan.n_rows} rows are not valid {stage.name} rows:\n{lines}\n"
                        + "\n".join(fix_advice(path, stage.name)), scan.problems)
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
            lines += fix_advice(self.path, self.stage)
        return "\n".join(lines)


def fix_advice(path: str | Path, stage: str) -> list[str]:
    """What to do about a file with bad rows, the same for ``data validate`` and ``train``: the row shape, and
    the convert command when the file is another tool's shape."""
    advice = [f"Fix or remove these lines. A {stage} line looks like: {get_stage(stage).row_shape}"]
    return advice + ([hint] if (hint := foreign_shape_hint(path, stage)) else [])


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


def _unequal_docs_problems(examples: list[tuple[int, Example]]) -> list[Problem]:
    """Rows whose doc count differs from most rows': batched together they stop a step."""
    counts = Counter(len(ex.docs) for _, ex in examples)
    if len(counts) < 2:
        return []
    usual = counts.most_common(1)[0][0]
    return [Problem(line, "docs", f"{len(ex.docs)} docs, most rows have {usual}; rows batched together need "
                                  "equal counts (give every row the same number)")
            for line, ex in examples if len(ex.docs) != usual]


def _budget_problems(examples: list[tuple[int, Example]], stage: Stage, config: ClaraConfig) -> list[Problem]:
    """Rows whose documents' memory slots alone fill the decoder prompt (no tokenizer needed)."""
    problems, per_doc, limit = [], config.n_mem + 1, config.max_decoder_length
    for line, ex in examples:
        k = stage.docs_in_prompt(config, len(ex.docs))
        if k * per_doc >= limit:
            problems.append(Problem(line, "docs", (
                f"{k} documents x {per_doc} memory tokens (doc_max_length {config.doc_max_length} / compr_rate "
                f"{config.compr_rate} + <SEP>) = {k * per_doc} tokens, more than the decoder's max_decoder_length "
                f"{limit} holds: use fewer documents per row, lower --doc-max-length or raise --compr-rate, or "
                "raise --max-decoder-length")))
    return problems


_PROMPT_MARGIN = 64  # tokens by which two rows' prompts may differ besides the question (paraphrase templates)


def _prompt_problems(examples: list[tuple[int, Example]], stage: Stage, config: ClaraConfig, tokenizer,
                     tokens) -> list[Problem]:
    """Rows whose decoder prompt leaves no answer token inside max_decoder_length: their loss would
    be over zero tokens (NaN). Measured with the model's tokenizer and chat template, only for rows
    a bound cannot clear (a token is at least one byte), so a large file costs a few prompts."""
    limit, probes, problems = config.max_decoder_length, {}, []
    for line, ex in examples:
        question = getattr(ex, "question", "")
        key = (getattr(ex, "data_type", "qa"), len(ex.docs))
        if key not in probes:  # the same row without its question: the fixed part of every such prompt
            probe = replace(ex, question="") if isinstance(ex, QAExample) else ex
            probes[key] = stage.prompt(tokenizer, tokens, config, probe, len(ex.docs))[0]
        size = len(question.encode("utf-8"))
        if probes[key] + size + _PROMPT_MARGIN < limit:
            continue
        n = limit + size if size > limit * 256 else stage.prompt(tokenizer, tokens, config, ex, len(ex.docs))[0]
        if n >= limit:
            memory = stage.docs_in_prompt(config, len(ex.docs)) * (config.n_mem + 1)
            problems.append(Problem(line, "question" if question else ROW, (
                f"the decoder prompt is {'over ' if size > limit * 256 else ''}{n} tokens ({memory} of them memory "
                f"slots), max_decoder_length is {limit}: no answer token is left to train on. Shorten the "
                "question, use fewer documents per row, or raise --max-decoder-length")))
    return problems


def training_problems(path: str | Path, stage: str | Stage, config: ClaraConfig, tokenizer=None,
                      tokens=None) -> list[Problem]:
    """Every problem that would stop training on ``path`` with ``config``: the rows' own (as
    :func:`read_jsonl`), unequal doc counts, memory slots beyond the decoder and, given the model's
    ``tokenizer`` and special ``tokens``, prompts that leave no room for an answer."""
    stage = get_stage(stage)
    scan = _scan(path, stage)
    problems = scan.problems + _unequal_docs_problems(scan.examples) + _budget_problems(scan.examples, stage, config)
    if tokenizer is not None and not problems:
        problems += _prompt_problems(scan.examples, stage, config, tokenizer, tokens)
    return sorted(problems, key=lambda p: p.line)


def check_training_file(path: str | Path, stage: str | Stage, config: ClaraConfig, tokenizer=None,
                        tokens=None) -> None:
    """The trainer's pre-flight: a :class:`DataError` listing every row :func:`training_problems`
    finds, before a step runs (or run.json is written)."""
    stage = get_stage(stage)
    problems = training_problems(path, stage, config, tokenizer, tokens)
    if problems:
        shown = problems[:50]
        more = f"\n… and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DataError(f"{path}: {len({p.line for p in problems})} rows would stop {stage.name} training:\n"
                        + "\n".join(p.format(path) for p in shown) + more
                        + f"\nFix or remove these lines (`clara-lite data validate {path} --stage {stage.name}` "
                        "lists them all).", problems)


def validate_file(path: str | Path, stage: str | Stage, top_k: int | None = None, config: ClaraConfig | None = None,
                  tokenizer=None, tokens=None) -> ValidationReport:
    """Check a data file without raising for bad rows; ``top_k`` also checks doc counts against it;
    ``config`` (the model settings training will use) also checks that memory slots fit the decoder,
    and with ``tokenizer``/``tokens`` that each prompt leaves room for its answer.

    For example::

        print(validate_file("train.jsonl", "stage2", top_k=5).format())
    """
    stage = get_stage(stage)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scan = _scan(path, stage)
    problems = scan.problems
    extra = _top_k_problems(scan.examples, stage, top_k) if top_k is not None else _unequal_docs_problems(
        scan.examples)
    if config is not None:
        extra += _budget_problems(scan.examples, stage, config)
        if tokenizer is not None and not extra:
            extra += _prompt_problems(scan.examples, stage, config, tokenizer, tokens)
    problems = sorted(problems + extra, key=lambda p: p.line)
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
