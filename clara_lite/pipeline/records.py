"""The rows that travel between pipeline steps, and the JSONL files that hold them.

Every step reads the previous step's file and writes its own, so each can be rerun, inspected or
replaced alone: ``raw.jsonl`` (one row per page: :class:`Page`), ``chunks.jsonl`` (:class:`Chunk`),
``synth.jsonl`` (one row per chunk, summary and QA pairs) and the training files. A
:class:`Corpus` is what the last step needs from any source (our synthesis or a public QA
dataset): documents, which document unit each belongs to, summaries and questions.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

IMAGE_REF = "[IMAGE_REF]"  # where an image sits in a page's text; the k-th one is the page's k-th image


def clean_paragraphs(text: str) -> str:
    """Paragraphs (split on blank lines) with their inner whitespace collapsed, joined by blank lines."""
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paragraphs if p)


def fill_images(text: str, fills: list[str | None] = ()) -> str:
    """``text`` with its k-th :data:`IMAGE_REF` replaced by ``fills[k]`` (removed when None or missing)."""
    if IMAGE_REF not in text:
        return text
    parts = text.split(IMAGE_REF)
    out = [parts[0]]
    for k, part in enumerate(parts[1:]):
        out += [(fills[k] if k < len(fills) else None) or "", part]
    return clean_paragraphs("".join(out))


@dataclass
class Page:
    """Text of one page (PDF page, slide) or of a whole flowing document (``page`` None).

    Each image of the page has an :data:`IMAGE_REF` in ``text`` where it is (at the end of the
    page when the format does not say where): the description step puts what a vision model
    says in its place, the chunker removes the ones left.
    """

    source: str  # path relative to the input folder
    page: int | None
    title: str
    text: str  # paragraphs separated by blank lines
    images: list[dict] = field(default_factory=list)  # {"name", "index"[, "path", "alt"]} on this page


@dataclass
class Chunk:
    """A passage of about ``doc_max_length`` tokens: what the model compresses into memory tokens."""

    id: str  # stable: a hash of source, page, index and text (see chunk.chunk_id)
    source: str
    page: int | None  # first page the passage comes from
    title: str
    index: int  # position within its source
    text: str  # image descriptions included, in place (see describe)
    n_tokens: int = 0


@dataclass(frozen=True)
class QAItem:
    """A question with its acceptable answers and the ids of the documents that answer it."""

    question: str
    answers: tuple[str, ...]
    positives: tuple[str, ...]  # doc ids (all needed to answer; HotpotQA has two)
    negatives: tuple[str, ...] = ()  # doc ids the dataset gives as distractors, used first
    explanation: str | None = None  # a longer answer (PubMedQA), the stage1 target when present


@dataclass
class Corpus:
    """Documents and questions from any source, ready to be split and written as stage files.

    ``groups`` maps a doc id to its document unit (a source file, an article title): the split
    keeps every unit whole, so no held-out question is answered by a document seen in training.
    """

    docs: dict[str, str] = field(default_factory=dict)  # doc id -> text, in first-seen order
    groups: dict[str, str] = field(default_factory=dict)  # doc id -> document unit
    summaries: dict[str, str] = field(default_factory=dict)  # doc id -> dense summary
    items: list[QAItem] = field(default_factory=list)

    def add_doc(self, doc_id: str, text: str, group: str | None = None) -> str:
        self.docs.setdefault(doc_id, text)
        self.groups.setdefault(doc_id, group if group is not None else doc_id)
        return doc_id


def row_of(record) -> dict:
    return asdict(record)


def from_row(cls, row: dict):
    """A dataclass from a JSON row, ignoring keys it does not know (rows may carry extras)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in names})


def dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(dumps(row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_rows(path: str | Path) -> list[dict]:
    """Every JSON object of a JSONL file (blank lines skipped); a bad line is named with its number."""
    rows = []
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError) as err:
                raise ValueError(f"{path}:{n}: not a JSON row ({type(err).__name__}: {str(err)[:200]})") from None
    return rows


def read_records(path: str | Path, cls) -> list:
    return [from_row(cls, row) for row in read_rows(path)]


def recover_appended(path: str | Path) -> list[dict]:
    """Rows of an append-only JSONL whose writer may have been killed mid-line.

    A torn last line (no newline, or not JSON) is cut off so appending can go on from a clean
    end; a bad line anywhere else is a real problem and raises.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows, good_end = [], 0
    with path.open("rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1  # after the final newline: empty, or a torn line
        if not line.strip():
            good_end += len(line) + (0 if last else 1)
            continue
        try:
            if last:
                raise ValueError("no newline")
            rows.append(json.loads(line))
        except ValueError:
            if last or i == len(lines) - 2 and not lines[-1]:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON; remove it to resume") from None
        good_end += len(line) + 1
    if good_end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return rows
