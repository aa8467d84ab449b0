"""Pages -> passages of about ``doc_max_length`` tokens of the base model's tokenizer.

Why the base model's tokenizer: the encoder reads each passage truncated to ``doc_max_length``
tokens, so a passage measured in that tokenizer's tokens loses nothing. Passages break on
paragraph boundaries, else on sentence boundaries, and only a sentence longer than the whole
budget is cut between words. Consecutive pages of a document share passages (slides are short),
and ``overlap`` tokens of trailing sentences are repeated at the start of the next passage so a
fact split across a boundary is whole in one of them.

For example::

    tokenizer = load_tokenizer("smollm2-135m")
    chunks = chunk_pages(pages, tokenizer, ChunkConfig(doc_max_length=256, overlap=32))
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from itertools import groupby

from ..model import base as models
from .records import Chunk, Page, fill_images

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


@dataclass(frozen=True)
class ChunkConfig:
    """How long passages are and how much consecutive ones share."""

    doc_max_length: int = 256  # token budget of a passage (the model's doc_max_length)
    overlap: int = 32  # tokens of trailing sentences repeated at the start of the next passage
    min_tokens: int = 8  # shorter passages (page numbers, lone headings) are dropped

    @staticmethod
    def default_overlap(doc_max_length: int) -> int:
        """An eighth of a passage, at most 32 tokens: enough to carry a sentence across a cut."""
        return min(32, doc_max_length // 8)

    def __post_init__(self):
        if self.doc_max_length < 8:
            raise ValueError(f"doc_max_length must be >= 8 tokens, got {self.doc_max_length}")
        if not 0 <= self.overlap <= self.doc_max_length // 2:
            raise ValueError(f"overlap must be in [0, doc_max_length/2], got {self.overlap}")


def load_tokenizer(base: str):
    """The tokenizer of a base model (registry name, Hub id or folder), without loading weights."""
    from transformers import AutoTokenizer


    spec = models.resolve(base)
    if spec.source == "embedded":
        path = models._embedded_cache()
    elif spec.source == "tiny":
        path = models._tokenizer_cache()
    else:
        path = spec.source
    return AutoTokenizer.from_pretrained(str(path))


def chunk_id(source: str, page: int | None, index: int, text: str) -> str:
    """Stable id: the same passage of the same file gets the same id on every run and machine."""
    key = f"{source}\n{page}\n{index}\n{text}".encode()
    return hashlib.sha1(key).hexdigest()[:16]


@dataclass
class _Unit:
    text: str
    page: int | None
    n_tokens: int
    opens_paragraph: bool = True  # joined to the previous unit by a newline, else by a space


def _count(tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _split_long(tokenizer, text: str, budget: int) -> list[str]:
    """A too-long paragraph as sentences, and a too-long sentence as runs of words."""
    pieces = []
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    for sentence, n in zip(sentences, _count(tokenizer, sentences), strict=True):
        if n <= budget:
            pieces.append(sentence)
            continue
        words, start = sentence.split(), 0
        per_word = max(n / max(len(words), 1), 1e-6)
        step = max(int(budget / per_word * 0.9), 1)  # estimate, then shrink until it fits
        while start < len(words):
            take = min(step, len(words) - start)
            while take > 1 and _count(tokenizer, [" ".join(words[start:start + take])])[0] > budget:
                take = max(int(take * 0.8), 1)
            pieces.append(" ".join(words[start:start + take]))
            start += take
    return pieces


def _units(pages: list[Page], tokenizer, budget: int) -> list[_Unit]:
    """Paragraphs of a document's pages, each short enough to fit a passage."""
    units: list[_Unit] = []
    for page in pages:  # image placeholders not described (no vision model, run step by step) are dropped
        paragraphs = [p for p in fill_images(page.text).split("\n\n") if p.strip()]
        for paragraph, n in zip(paragraphs, _count(tokenizer, paragraphs), strict=True):
            if n <= budget:
                units.append(_Unit(paragraph, page.page, n))
            else:
                pieces = _split_long(tokenizer, paragraph, budget)
                units += [_Unit(t, page.page, c, n == 0)
                          for n, (t, c) in enumerate(zip(pieces, _count(tokenizer, pieces), strict=True))]
    return units


def _pack(units: list[_Unit], budget: int, overlap: int) -> list[list[_Unit]]:
    """Greedy packing; each passage after the first starts with up to ``overlap`` tokens of the last one."""
    passages: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = fresh = 0  # tokens in the passage; of them, tokens not carried over
    for unit in units:
        cost = unit.n_tokens + 1  # +1: the separator between units
        if current and size + cost > budget and fresh:
            passages.append(current)
            carried, kept = [], 0
            for prev in reversed(current):  # whole trailing units (sentences) only
                if kept + prev.n_tokens + 1 > overlap or kept + prev.n_tokens + 1 + cost > budget:
                    break
                carried.insert(0, prev)
                kept += prev.n_tokens + 1
            current, size, fresh = carried, kept, 0
        current.append(unit)
        size += cost
        fresh += cost
    if current and fresh:
        passages.append(current)
    return passages


def _sentences_for_overlap(units: list[_Unit], tokenizer, overlap: int) -> list[_Unit]:
    """With overlap on, paragraphs are split into sentences so the carried tail can be short."""
    if overlap == 0:
        return units
    out = []
    for unit in units:
        sentences = [s for s in _SENTENCE_END.split(unit.text) if s.strip()]
        if len(sentences) < 2:
            out.append(unit)
            continue
        counts = _count(tokenizer, sentences)
        out += [_Unit(s, unit.page, c, unit.opens_paragraph and n == 0)
                for n, (s, c) in enumerate(zip(sentences, counts, strict=True))]
    return out


def chunk_pages(pages: list[Page], tokenizer, config: ChunkConfig = ChunkConfig()) -> list[Chunk]:
    """Passages of every document, in document order (image descriptions are text by now: :mod:`.describe`)."""
    chunks: list[Chunk] = []
    budget = config.doc_max_length
    for source, group in groupby(pages, key=lambda p: p.source):
        doc_pages = list(group)
        title = doc_pages[0].title
        units = _sentences_for_overlap(_units(doc_pages, tokenizer, budget), tokenizer, config.overlap)
        index = 0
        for passage in _pack(units, budget, config.overlap):
            text = "".join(("\n" if u.opens_paragraph else " ") * (n > 0) + u.text for n, u in enumerate(passage))
            n_tokens = _count(tokenizer, [text])[0]
            if n_tokens < config.min_tokens:
                continue
            page = passage[0].page
            chunks.append(Chunk(chunk_id(source, page, index, text), source, page, title, index, text, n_tokens))
            index += 1
    over = sum(c.n_tokens > budget for c in chunks)
    if over:  # joining can add a token or two where pieces meet
        log.info("%d of %d passages are a few tokens over %d", over, len(chunks), budget)
    return chunks
