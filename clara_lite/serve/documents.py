"""Documents for an index: a folder (every format the data pipeline extracts), a JSONL, or strings,
cut into chunks the encoder reads whole, each with its source, page and character span.

Why the pipeline's steps: extraction (:mod:`clara_lite.pipeline.extract`) and passage packing
(:mod:`clara_lite.pipeline.chunk`) already break on paragraphs and sentences with overlap. Two
things are added for serving: nothing is dropped (no minimum length; a chunk the encoder would
truncate at ``doc_max_length`` is split again at token offsets) and each chunk's span in its
document's text is found, so an answer can cite where it came from.

A document's *text* is its extracted pages joined by blank lines (image placeholders removed),
paragraphs cleaned as the pipeline cleans them; spans index into that string.

For example::

    docs = documents_from(["Ada Lovelace wrote the first program.", "Paris is in France."])
    chunks = chunk_documents(docs, tokenizer, doc_max_length=256)
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io.paths import refusal, shown
from ..model.rows import DOC_KEYS
from ..pipeline.build import DATA_MODULES
from ..pipeline.chunk import ChunkConfig, chunk_pages
from ..pipeline.extract import EXTRACTORS, Unreadable, _choose_docling, extract_file
from ..pipeline.records import Page, clean_paragraphs, fill_images

log = logging.getLogger(__name__)


@dataclass
class Document:
    """One source: a file of a folder, a JSONL line or a string. ``pages`` are read on demand
    (extraction is the slow part of a folder), so a shard reads only its own documents."""

    source: str  # a folder's relative path, "<file>:<line>" or a JSONL "id", "text:<sha1>" for a string
    title: str = ""
    text: str | None = None  # already known (JSONL, strings); None: extract ``path``
    path: Path | None = None  # the file, for a folder's documents
    root: Path | None = None  # the folder (sources are relative to it)

    def pages(self, docling=None) -> list[Page]:
        if self.text is not None:
            return [Page(self.source, None, self.title, clean_paragraphs(self.text))]
        return [p for p in extract_file(self.path, self.root, docling=docling) if p.text.strip()]


@dataclass
class IndexChunk:
    """A chunk of an index: what is compressed, and where it came from."""

    id: str  # stable: hash of source, page, position and text (pipeline.chunk.chunk_id)
    source: str
    page: int | None  # first page (PDF page, slide) the chunk comes from; None for flowing documents
    title: str
    index: int  # position within its source
    start: int  # character span [start, end) in the document's text
    end: int
    text: str
    n_tokens: int = 0

    def row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> IndexChunk:
        return cls(**row)


def text_source(text: str) -> str:
    """The source name of a bare string: its content hash, so adding it twice is adding it once."""
    return "text:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def documents_from(source, *, use_docling: str = "auto", skipped: list | None = None) -> list[Document]:
    """Documents of a folder (recursively, sorted; files of types no extractor reads are left out, and
    files :func:`clara_lite.io.paths.refusal` refuses, a link out of the folder or a name that is not
    UTF-8, skipped with a warning and listed in ``skipped``), a JSONL file (``{"text"|"doc": ...,
    "source"|"id"?: ..., "title"?: ...}``, a JSON string, or training rows, whose docs become
    documents) or a list of strings."""
    if isinstance(source, str | Path) and Path(source).is_dir():
        root = Path(source)
        docs = []
        for p in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in EXTRACTORS):
            why = refusal(p, root)
            if why is not None:
                log.warning("skipped %s: %s", shown(p.relative_to(root)), why)
                if skipped is not None:
                    skipped.append({"source": shown(p.relative_to(root)), "reason": why})
                continue
            docs.append(Document(str(p.relative_to(root)), p.stem, path=p, root=root))
        return docs
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"documents not found: {path} (a folder, a .jsonl file or a list of strings)")
        return jsonl_documents(path)
    texts = list(source)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("documents must be strings, a folder or a JSONL file")
    return _dedupe([Document(text_source(t), "", t) for t in texts if t.strip()])


def _dedupe(docs: list[Document]) -> list[Document]:
    seen, out = set(), []
    for doc in docs:
        if doc.source not in seen:
            seen.add(doc.source)
            out.append(doc)
    return out


def jsonl_documents(path: Path) -> list[Document]:
    """The documents of a JSONL file, one reader for the index and ``ask``: a JSON string, ``{"text"|"doc":
    ..., "source"|"id"?: ..., "title"?: ...}``, or a training row (its ``docs``); a bad line names file:line."""
    docs: list[Document] = []
    named: dict[str, tuple[int, str]] = {}  # source -> (first line, text)
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if isinstance(row, str):
            docs.append(Document(text_source(row), "", row))
            continue
        if isinstance(row, dict):
            text = next((row[k] for k in ("text", "doc") if isinstance(row.get(k), str)), None)
            if text is not None:
                name = row.get("source") or row.get("id")
                source = str(name) if name is not None else f"{path.name}:{lineno}"
                first = named.setdefault(source, (lineno, text))
                if first[0] != lineno and first[1] != text:  # the same text twice is one document
                    raise ValueError(f"{path}:{lineno}: source {source!r} is also line {first[0]}'s, with other "
                                     "text: give each document its own source (or join them into one text)")
                docs.append(Document(source, str(row.get("title") or ""), text))
                continue
            listed = next((row[k] for k in DOC_KEYS if isinstance(row.get(k), list)), None)
            if listed is not None and all(isinstance(d, str) for d in listed):
                docs += [Document(text_source(d), "", d) for d in listed]
                continue
        raise ValueError(f'{path}:{lineno}: expected {{"text": "...", "source": "..."}}, a JSON string, '
                         'or a training row with "docs"')
    docs = _dedupe([d for d in docs if d.text.strip()])
    if not docs:
        raise ValueError(f"no documents in {path}")
    return docs


def docling_for(use_docling: str = "auto"):
    """Docling's converter when installed (and wanted), else None: the light extractors."""
    return _choose_docling(use_docling)[0]


# --------------------------------------------------------------------------- chunking


def document_text(pages: Sequence[Page]) -> str:
    """The text a document's chunks and spans refer to (see the module docstring)."""
    return "\n\n".join(t for t in (fill_images(p.text) for p in pages) if t.strip())


_WORD = re.compile(r"\S+")


class _Positions:
    """Where each character of the whitespace-collapsed text was in the original: two integers per word
    (its start in each), not one Python int per character (a 50 MB text made 50 million of them)."""

    def __init__(self):
        self.norm, self.orig = array("q"), array("q")

    def __getitem__(self, at: int) -> int:
        w = bisect.bisect_right(self.norm, at) - 1
        return self.orig[w] + at - self.norm[w]  # a joining space: the first character of the run it stands for


def _normalized(text: str) -> tuple[str, _Positions]:
    """``text`` with whitespace runs as single spaces, and each kept character's position in ``text``."""
    where, words, n = _Positions(), [], 0
    for m in _WORD.finditer(text):
        n += 1 if words else 0  # the space joining it to the word before
        where.norm.append(n)
        where.orig.append(m.start())
        words.append(m.group())
        n += m.end() - m.start()
    return " ".join(words), where


def locate(chunks: Sequence[str], text: str, follows: Sequence[bool] | None = None) -> list[tuple[int, int]]:
    """Character spans of consecutive chunks in ``text``, compared with whitespace collapsed (the
    chunker re-joins paragraphs and words with other whitespace). A chunk may overlap the one
    before it, unless ``follows[i]``: then it starts where chunk i-1 ends (pieces of a split)."""
    norm, where = _normalized(text)
    spans, start, end = [], 0, 0
    for i, chunk in enumerate(chunks):
        needle = " ".join(chunk.split())
        at = norm.find(needle, end if follows is not None and follows[i] else start)
        if at < 0:
            raise ValueError(f"chunk not found in its document: {needle[:60]!r}")
        start, end = at + 1, at + len(needle)
        spans.append((where[at], where[end - 1] + 1))
    return spans


def _encoded_length(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _split_by_tokens(tokenizer, text: str, budget: int) -> list[str]:
    """Pieces of at most ``budget`` tokens, cut at token offsets (for what the packer left too long)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    pieces, start = [], 0
    for first in range(0, len(offsets), budget):
        stop = offsets[min(first + budget, len(offsets)) - 1][1]
        if first + budget >= len(offsets):
            stop = len(text)
        piece = text[start:stop]
        if piece.strip():
            pieces.append(piece.strip())
        start = stop
    return pieces


def chunk_document(doc: Document, pages: list[Page], tokenizer, *, doc_max_length: int,
                   overlap: int | None = None) -> list[IndexChunk]:
    """The chunks of one document: every character of its text is in at least one of them."""
    from ..pipeline.chunk import chunk_id

    if not pages:
        return []
    overlap = ChunkConfig.default_overlap(doc_max_length) if overlap is None else overlap
    # a little under the budget: joining pieces can add a token where they meet
    config = ChunkConfig(doc_max_length=max(8, doc_max_length - 2), overlap=min(overlap, (doc_max_length - 2) // 2),
                         min_tokens=0)
    packed = chunk_pages(pages, tokenizer, config)
    texts: list[tuple[str, int | None, bool]] = []  # (text, page, starts where the previous one ends)
    limit = doc_max_length - 1  # the encoder reads <ENC> bos text eos: keep a token for where text meets them
    for chunk in packed:
        if _encoded_length(tokenizer, chunk.text) <= limit:
            texts.append((chunk.text, chunk.page, False))
        else:
            pieces = _split_by_tokens(tokenizer, chunk.text, limit)
            texts += [(piece, chunk.page, n > 0) for n, piece in enumerate(pieces)]
    full = document_text(pages)
    spans = locate([t for t, _, _ in texts], full, [f for _, _, f in texts])
    title = doc.title or pages[0].title
    out = []
    for index, ((text, page, _), (start, end)) in enumerate(zip(texts, spans, strict=True)):
        out.append(IndexChunk(chunk_id(doc.source, page, index, text), doc.source, page, title, index, start, end,
                              text, _encoded_length(tokenizer, text)))
    return out


def skip_entry(doc: Document, err: Exception) -> dict:
    """Why ``doc`` could not be read, for the index's ``skipped`` list: a missing reader names the package
    to install (``needs``: its module, so the index can add the document once it is installed)."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        module = err.name.split(".")[0]
        package = DATA_MODULES.get(module, module)
        return {"source": doc.source, "needs": module,
                "reason": f"needs {package}: pip install {package} (an index then adds it on its next use)"}
    reason = str(err) if isinstance(err, Unreadable) else f"cannot read ({type(err).__name__}: {err})"
    return {"source": doc.source, "reason": reason}


def chunk_documents(docs: Iterable[Document], tokenizer, *, doc_max_length: int, overlap: int | None = None,
                    docling=None, skipped: list | None = None) -> list[list[IndexChunk]]:
    """Chunks per document (an unreadable file gives none and is listed in ``skipped``)."""
    out = []
    for doc in docs:
        try:
            pages = doc.pages(docling)
        except Exception as err:  # corrupt, encrypted: list it and go on, as the data pipeline does
            entry = skip_entry(doc, err)
            log.warning("skipped %s: %s", doc.source, entry["reason"])
            if skipped is not None:
                skipped.append(entry)
            out.append([])
            continue
        out.append(chunk_document(doc, pages, tokenizer, doc_max_length=doc_max_length, overlap=overlap))
    return out
