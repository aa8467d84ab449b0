"""Chunks -> a dense summary and a few question/answer pairs each (in one or more languages), resumably.

Each chunk costs a summary call (the stage1 paraphrase target) and one QA call per question
language (3-5 pairs each: stage1 QA rows and the stage2/3 questions). With ``question_language``
``"en,zh"`` every chunk gets English and Chinese pairs, each answer in its question's language;
both are questions about the same chunk, so the split keeps them on the same side. The prompts
are files (:mod:`.prompts`): the shipped defaults, or your own. Two small prompts instead of one combined JSON
request because small local models follow them (benchmarks/README.md, "Measurements behind the
defaults": smollm2-135m gave no usable pairs from the combined prompt). The QA prompt asks for a JSON list (``qa_format="json"``, API models)
or ``Q:``/``A:`` lines (``"lines"``, small local models); either reply is parsed by both routes:
JSON repaired with ``json-repair``, then a regex over ``Q:``/``A:`` lines. Malformed pairs are
dropped and counted.

Resumable: one row per chunk is appended to the output and flushed to disk as soon as it is
done; a rerun skips chunks already there (a torn last line from a killed run is cut off), so an
interrupted run continued ends with exactly the file of an uninterrupted one.

For example::

    report = synthesize(chunks, "synth.jsonl", OpenAICompatible.from_env())
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import prompts
from .records import Chunk, dumps, recover_appended

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthesisConfig:
    """What to ask the generator for, per chunk."""

    n_questions: int = 3  # QA pairs asked for per language (3-5 recommended); at most this many are kept
    # None: the text's language; "German" or "de": cross-lingual; "en,zh": both, for every chunk
    question_language: str | None = None
    qa_format: str = "auto"  # "json" (a JSON list), "lines" ("Q:/A:" lines) or "auto": the generator's choice
    max_tokens: int = 512  # per QA reply
    summary_max_tokens: int = 256
    summary: bool = True  # ask for a summary (stage1 paraphrase rows)
    summary_prompt: str | None = None  # prompt files; None: the shipped prompts/summary.txt, qa.txt
    qa_prompt: str | None = None

    @property
    def languages(self) -> tuple[str | None, ...]:
        """The question languages as given (``("en", "zh")``), or ``(None,)``: the text's own."""
        given = tuple(x.strip() for x in (self.question_language or "").split(",") if x.strip())
        return given or (None,)

    def __post_init__(self):
        if not 1 <= self.n_questions <= 10:
            raise ValueError(f"n_questions must be 1..10, got {self.n_questions}")
        if self.qa_format not in ("auto", "json", "lines"):
            raise ValueError(f"qa_format must be 'auto', 'json' or 'lines', got {self.qa_format!r}")


# --------------------------------------------------------------------------- prompts

LANGUAGE_NAMES = {  # codes people write in --question-language -> what the prompt says
    "en": "English", "zh": "Chinese", "zh-cn": "Simplified Chinese", "zh-tw": "Traditional Chinese",
    "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "ru": "Russian", "uk": "Ukrainian", "pl": "Polish", "tr": "Turkish", "ar": "Arabic", "hi": "Hindi",
    "ja": "Japanese", "ko": "Korean", "vi": "Vietnamese", "id": "Indonesian", "th": "Thai", "sv": "Swedish",
}
QA_FORMATS = {
    "json": 'Reply with a JSON list only, like [{"question": "...", "answer": "..."}].',
    "lines": "Write each pair on two lines:\nQ: <question>\nA: <answer>",
}
LANGUAGE = " Write the questions and answers in {language}, whatever the language of the text."


def language_name(language: str) -> str:
    return LANGUAGE_NAMES.get(language.lower(), language)


def summary_messages(text: str, template: str | None = None) -> list[dict]:
    return [{"role": "user", "content": prompts.fill(template or prompts.default("summary"), text=text)}]


def qa_messages(text: str, config: SynthesisConfig, qa_format: str = "json", language: str | None = None,
                template: str | None = None) -> list[dict]:
    """The QA prompt in ``language`` (default: the config's first); ``qa_format`` is used when the config
    says ``auto``."""
    language = language or config.languages[0]
    instruction = LANGUAGE.format(language=language_name(language)) if language else ""
    qa_format = qa_format if config.qa_format == "auto" else config.qa_format
    prompt = prompts.fill(template or prompts.default("qa"), n=config.n_questions, language=instruction,
                          format=QA_FORMATS[qa_format], text=text)
    return [{"role": "user", "content": prompt}]


# --------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_Q = re.compile(r"^\s*(?:[-*]\s*)?(?:\d+[.)]\s*)?Q(?:uestion)?\s*\d*\s*[:.)\-]\s*(.*)$", re.I)
_A = re.compile(r"^\s*(?:[-*]\s*)?A(?:nswer)?\s*\d*\s*[:.)\-]\s*(.*)$", re.I)
_INLINE = re.compile(r"Q(?:uestion)?\s*\d*\s*:\s*(.+?)\s+A(?:nswer)?\s*\d*\s*:\s*(.+)", re.I)
_PREFIX = re.compile(r"^\s*(?:(?:\d+[.)]|[-*])\s+|(?:Q(?:uestion)?|A(?:nswer)?)\s*\d*\s*:\s*)", re.I)  # "1. ", "Q:"
_Q_KEYS, _A_KEYS = ("question", "q", "query", "Question", "Q"), ("answer", "a", "Answer", "A", "short_answer")


def _clean(text) -> str:
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        return ""
    text, before = " ".join(str(text).split()), None
    while text != before:  # small models nest labels: "Q: 1. What ...?"
        before, text = text, _PREFIX.sub("", text, count=1)
    return text.strip().strip("\"'*").strip()


def _json_candidates(text: str) -> list | None:
    """Raw pair candidates from a JSON-ish reply, or None when the reply is not JSON at all."""
    import json_repair

    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    starts = [i for i in (body.find("["), body.find("{")) if i >= 0]
    if not starts:
        return None
    try:
        value = json_repair.loads(body[min(starts):])
    except Exception:  # json-repair gives up on some inputs instead of repairing them
        return None
    if isinstance(value, dict):
        inner = next((value[k] for k in ("qa", "qa_pairs", "pairs", "questions", "items", "data")
                      if isinstance(value.get(k), list)), None)
        value = inner if inner is not None else [value]
    if not isinstance(value, list) or not value:
        return None
    return value


def _json_pair(item) -> tuple[str, str] | None:
    if isinstance(item, dict):
        q = next((item[k] for k in _Q_KEYS if k in item), None)
        a = next((item[k] for k in _A_KEYS if k in item), None)
        if isinstance(a, list) and a:
            a = a[0]
        return _clean(q), _clean(a)
    if isinstance(item, list | tuple) and len(item) == 2:
        return _clean(item[0]), _clean(item[1])
    return None


def _line_candidates(text: str) -> tuple[list[tuple[str, str]], int]:
    pairs, dropped, question = [], 0, None
    for line in text.replace("**", "").replace("__", "").splitlines():  # markdown bold around labels
        inline = _INLINE.search(line)
        if inline:
            if question is not None:
                dropped += 1
            pairs.append((inline.group(1), inline.group(2)))
            question = None
        elif (q := _Q.match(line)) is not None:
            if question is not None:  # a question with no answer before the next question
                dropped += 1
            question = q.group(1)
        elif (a := _A.match(line)) is not None:
            if question is None:
                dropped += 1
            else:
                pairs.append((question, a.group(1)))
                question = None
    return pairs, dropped + (question is not None)


def parse_qa(text: str, limit: int | None = None) -> tuple[list[tuple[str, str]], int]:
    """``(pairs, dropped)`` from a generator reply: JSON (repaired) first, else ``Q:``/``A:`` lines.

    A pair is dropped (and counted) when the question or answer is empty, the question is shorter
    than 8 characters (a fragment, not a question), the answer repeats the question, or the question
    was already asked. At most ``limit`` pairs are kept.

    >>> parse_qa('[{"question": "Who wrote it?", "answer": "Ann"}, {"question": "Who?", "answer": "x"}]')
    ([('Who wrote it?', 'Ann')], 1)
    """
    candidates, dropped = [], 0
    items = _json_candidates(text)
    if items is not None:
        for item in items:
            pair = _json_pair(item)
            if pair is None:
                dropped += 1
            else:
                candidates.append(pair)
    if not candidates:
        candidates, dropped = _line_candidates(text)
    pairs, seen = [], set()
    for question, answer in candidates:
        question, answer = _clean(question), _clean(answer)
        key = question.lower()
        if not question or not answer or key == answer.lower() or key in seen or len(question) < 8:
            dropped += 1
            continue
        seen.add(key)
        pairs.append((question, answer))
    return pairs[:limit] if limit else pairs, dropped


def parse_summary(text: str) -> str | None:
    """The summary from a reply (tolerating a label, quotes, fences or a JSON object)."""
    fenced = _FENCE.search(text)
    text = (fenced.group(1) if fenced else text).strip()
    if text.startswith("{"):
        items = _json_candidates(text)
        if items and isinstance(items[0], dict):
            text = str(next((v for k, v in items[0].items() if "summary" in k.lower()), ""))
    text = re.sub(r"^\s*\**(?:summary|résumé|zusammenfassung)\**\s*:\s*", "", text, flags=re.I)
    text = " ".join(text.split()).strip("\"'")
    return text or None


# --------------------------------------------------------------------------- grounded pairs for small local models

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"\w+")
# an answer span: a number (a year, a count) or a run of capitalised words (a name, a title, a place)
_SPAN = re.compile(r"\b(?:\d[\d,.]*\d|\d)\b|\b(?:[A-Z][\w'’-]+)(?:\s+(?:of|de|the|and|von|van|du|la|&)?\s*[A-Z][\w'’-]+)*")
_STOP = {"the", "a", "an", "of", "in", "on", "at", "to", "and", "or", "is", "was", "are", "were", "it", "its", "this",
         "that", "by", "for", "with", "as", "from", "be", "been", "has", "have", "had", "which", "who", "their"}


def grounded(answer: str, text: str, share: float = 0.5) -> bool:
    """Whether most of ``answer``'s content words occur in ``text`` (a small model's answers are often invented)."""
    words = [w for w in _WORD.findall(answer.lower()) if w not in _STOP]
    if not words:
        return False
    known = set(_WORD.findall(text.lower()))
    return sum(w in known for w in words) >= share * len(words)


def cloze_pairs(text: str, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` fill-in-the-blank pairs from ``text``'s own sentences: a name or number blanked out, the
    answer the span itself, so every answer is in the text. One per sentence, spread over the passage.

    >>> cloze_pairs("Jake Phelps edits Thrasher magazine. The shop opened in 1981 in Oslo.", 2)
    [('Which word or words fill the blank: "____ edits Thrasher magazine."?', 'Jake Phelps'), ('Which word or words fill the blank: "The shop opened in ____ in Oslo."?', '1981')]
    """
    pairs = []
    for sentence in _SENTENCE.split(" ".join(text.split())):
        if len(sentence.split()) < 5 or len(pairs) >= n:
            continue
        spans = [m for m in _SPAN.finditer(sentence) if m.group().lower() not in _STOP and len(m.group()) > 1]
        if not spans:
            continue
        span = max(spans, key=lambda m: (len(m.group().split()), -m.start()))  # the longest name, else the first
        blanked = sentence[: span.start()] + "____" + sentence[span.end():]
        pairs.append((f'Which word or words fill the blank: "{blanked}"?', span.group()))
    return pairs


# --------------------------------------------------------------------------- the loop


@dataclass
class SynthesisReport:
    chunks: int = 0  # chunks in the input
    done_before: int = 0  # already in the output (resumed)
    generated: int = 0  # chunk rows written by this run
    pairs: int = 0  # QA pairs written by this run (all languages)
    dropped: int = 0  # malformed pairs dropped by this run
    without_qa: int = 0  # rows written by this run with no usable pair
    empty: int = 0  # chunks without text, left out (image chunks of an older chunks.jsonl)

    def format(self) -> str:
        text = (f"{self.generated} chunks synthesized ({self.done_before} already done, {self.chunks} in all): "
                f"{self.pairs} QA pairs, {self.dropped} malformed pairs dropped, "
                f"{self.without_qa} chunks without a usable pair")
        return text + (f"; {self.empty} chunks without text left out" if self.empty else "")


@dataclass(frozen=True)
class _Templates:
    summary: str
    qa: str

    @classmethod
    def of(cls, config: SynthesisConfig) -> _Templates:
        return cls(prompts.load("summary", config.summary_prompt), prompts.load("qa", config.qa_prompt))


def synthesize_chunk(chunk: Chunk, generator, config: SynthesisConfig = SynthesisConfig(),
                     templates: _Templates | None = None) -> dict:
    """One output row: the chunk's text, summary and QA pairs in every question language."""
    templates = templates or _Templates.of(config)
    text = chunk.text
    summary = parse_summary(generator.chat(summary_messages(text, templates.summary),
                                           max_tokens=config.summary_max_tokens)) if config.summary else None
    # auto: the generator's preferred format (LocalModel says "lines": small models follow Q:/A: lines)
    qa_format = getattr(generator, "qa_format", "json")
    small = getattr(generator, "small", False)  # a small local model: keep grounded answers, fill up with cloze
    qa, dropped, cloze = [], 0, 0
    for language in config.languages:
        messages = qa_messages(text, config, qa_format, language, templates.qa)
        pairs, n_dropped = parse_qa(generator.chat(messages, max_tokens=config.max_tokens), config.n_questions)
        if small:
            kept = [(q, a) for q, a in pairs if grounded(a, text)]
            n_dropped += len(pairs) - len(kept)
            asked = {q.lower() for q, _ in kept}
            filler = [p for p in cloze_pairs(text, config.n_questions) if p[0].lower() not in asked]
            filler = filler[: max(config.n_questions - len(kept), 0)] if language is None else []
            pairs, cloze = kept + filler, cloze + len(filler)
        qa += [{"question": q, "answer": a, **({"language": language} if language else {})} for q, a in pairs]
        dropped += n_dropped
    languages = [x for x in config.languages if x]
    return {"id": chunk.id, "source": chunk.source, "page": chunk.page, "title": chunk.title, "doc": text,
            "summary": summary, "qa": qa, "dropped": dropped, "language": languages or None,
            "generator": generator.name, **({"cloze": cloze} if cloze else {})}


def synthesize(chunks: list[Chunk], out: str | Path, generator, config: SynthesisConfig = SynthesisConfig(), *,
               progress: Callable[[int, int], None] | None = None) -> SynthesisReport:
    """Append one row per chunk not yet in ``out``; each row is on disk before the next call.

    A generator error propagates after the rows so far are saved: rerun to go on.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    templates = _Templates.of(config)  # a bad prompt file fails before any call
    done = {row.get("id") for row in recover_appended(out)}
    report = SynthesisReport(chunks=len(chunks), done_before=sum(c.id in done for c in chunks))
    todo = [c for c in chunks if c.id not in done]
    if len(done) > report.done_before:
        log.warning("%s holds %d rows of chunks no longer in the input; they are ignored downstream",
                    out, len(done) - report.done_before)
    with out.open("a", encoding="utf-8") as fh:
        for i, chunk in enumerate(todo):
            if not chunk.text.strip():
                report.empty += 1
                continue
            row = synthesize_chunk(chunk, generator, config, templates)
            fh.write(dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())  # a killed run loses at most the chunk in flight
            report.generated += 1
            report.pairs += len(row["qa"])
            report.dropped += row["dropped"]
            report.without_qa += not row["qa"]
            if progress is not None:
                progress(i + 1, len(todo))
    log.info("%s", report.format())
    return report
