"""The base model reading text: the text baselines' answers, and distillation's teacher answers, cached.

Distillation (PISCO, Louis et al. 2025): the base model with every adapter off answers each training question
with the documents' *text* in its prompt (the prompt of the text-RAG baseline, :func:`inputs.text_answer_prompt`,
greedy), and CLaRa learns to give that answer from the documents' memory vectors. The teacher's answers are
what a reader of the text says, in the base model's own words, which the decoder can learn to match more
easily than a dataset's gold answers.

The answers are cached in a JSONL file (the run folder's ``teacher_answers.jsonl``), one line per answer, keyed
by a hash of the base model's fingerprint, the prompt, the question, the documents and the generation length:
each batch is appended and fsync'd as it is done, so an interrupted pass loses at most the batch in flight, a
torn last line is cut off when the file is opened again, and a rerun costs nothing. For example::

    cache = TeacherCache(run_dir / "teacher_answers.jsonl")
    answers = teacher_answers(model, [("Who wrote it?", ("The book was written by Ann.",))], cache)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import inputs

log = logging.getLogger(__name__)

BATCH_SIZE = 8  # questions per generate call (compare's default)


@torch.no_grad()
def answer_plain(model, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The base model (every adapter off) continuing chat prompts, greedily: the text baselines and the teacher."""
    tok = model.tokenizer
    enc = tok(prompts, return_tensors="pt", padding="longest", add_special_tokens=False)
    model.eval()
    with model.lm.disable_adapter():
        out = model.lm.generate(input_ids=enc["input_ids"].to(model.device),
                                attention_mask=enc["attention_mask"].to(model.device), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    new = out[:, enc["input_ids"].shape[1]:]  # (B, new tokens): generate returns prompt + continuation
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def base_fingerprint(model) -> str:
    """A short hash of what the teacher's answers depend on besides the prompt: the base model's name and every
    weight but the adapters' (sizes and two float64 sums, rounded so that fp16 and fp32 loads agree)."""
    count, absolute, squares = 0, 0.0, 0.0
    for name, p in model.lm.named_parameters():
        if "lora_" in name:
            continue
        for block in p.detach().reshape(-1).split(1 << 22):
            block = block.to(torch.float64)
            count += block.numel()
            absolute += block.abs().sum().item()
            squares += block.square().sum().item()
    facts = {"base_model": model.config.base_model, "vocab": len(model.tokenizer), "params": count,
             "abs_sum": f"{absolute:.5g}", "sq_sum": f"{squares:.5g}"}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def answer_key(fingerprint: str, prompt: str, question: str, docs: Sequence[str], max_new_tokens: int) -> str:
    """The cache key of one teacher answer."""
    text = json.dumps([fingerprint, prompt, question, list(docs), max_new_tokens], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TeacherCache:
    """Teacher answers by key, read from ``path`` (a torn last line is cut off) and appended to it, fsync'd."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.answers: dict[str, str] = {}
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # an interrupted append leaves a line without its newline
        if len(whole) < len(data):
            log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path,
                        len(data) - len(whole))
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))
                f.flush()
                os.fsync(f.fileno())
        for n, line in enumerate(whole.decode("utf-8", errors="replace").splitlines(), start=1):
            try:
                row = json.loads(line)
                self.answers[row["key"]] = row["answer"]
            except (ValueError, KeyError, TypeError):  # not ours or damaged: that answer is generated again
                log.warning("%s:%d: not a teacher answer line; ignored", self.path, n)

    def __len__(self) -> int:
        return len(self.answers)

    def add(self, rows: list[dict]) -> None:
        """Append ``rows`` (each with ``key`` and ``answer``) as one write, flushed and fsync'd."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.answers.update({r["key"]: r["answer"] for r in rows})


def teacher_answers(model, questions: Sequence[tuple[str, Sequence[str]]], cache: TeacherCache, *,
                    max_new_tokens: int = 32, batch_size: int = BATCH_SIZE) -> list[str]:
    """The base model's answer to each (question, documents) with the documents' text in its prompt: from
    ``cache``, else generated (longest prompts first, in batches, each batch appended to the cache)."""
    from tqdm.auto import tqdm

    if not questions:
        return []
    fingerprint = base_fingerprint(model)
    prompts = [inputs.text_answer_prompt(model.tokenizer, q, docs) for q, docs in questions]
    keys = [answer_key(fingerprint, text, q, docs, max_new_tokens)
            for (q, docs), (_, text) in zip(questions, prompts, strict=True)]
    todo = {k: i for i, k in enumerate(keys) if k not in cache.answers}  # one generation per distinct key
    order = sorted(todo.values(), key=lambda i: -prompts[i][0])  # similar lengths batched: little padding
    if order:
        docs = len({tuple(questions[i][1]) for i in order})
        log.info("Teacher: %d of %d answers to generate (%d cached), over %d documents, into %s", len(order),
                 len(keys), len(keys) - len(order), docs, cache.path)
        start, done_docs = time.perf_counter(), set()
        with tqdm(total=len(order), desc="teacher answers", unit="answer", dynamic_ncols=True) as bar:
            for s in range(0, len(order), batch_size):
                batch = order[s : s + batch_size]
                texts = answer_plain(model, [prompts[i][1] for i in batch], max_new_tokens)
                cache.add([{"key": keys[i], "question": questions[i][0], "answer": text}
                           for i, text in zip(batch, texts, strict=True)])
                done_docs.update(tuple(questions[i][1]) for i in batch)
                minutes = (time.perf_counter() - start) / 60
                bar.update(len(batch))
                bar.set_postfix(docs_per_min=f"{len(done_docs) / max(minutes, 1e-9):.1f}")
        minutes = (time.perf_counter() - start) / 60
        log.info("Teacher: %d answers over %d documents in %.1f min (%.1f documents/minute, %.1f answers/minute)",
                 len(order), docs, minutes, docs / max(minutes, 1e-9), len(order) / max(minutes, 1e-9))
    return [cache.answers[k] for k in keys]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


def cut_answer(text: str, cut: str) -> str:
    """``text`` whole (``cut="none"``) or up to its first sentence end or line break (``"sentence"``).

    >>> cut_answer("Jake Phelps. He edits Thrasher.", "sentence")
    'Jake Phelps.'
    """
    if cut == "none":
        return text
    if cut != "sentence":
        raise ValueError(f"cut must be 'none' or 'sentence', got {cut!r}")
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()
