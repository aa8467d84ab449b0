"""A stage's training targets: the rows' gold answers, the text-reading teacher's, or both (``TrainConfig.targets``).

The teacher pass runs before the stage trains, with the stage's starting model and every adapter off
(:mod:`clara_lite.model.teacher`), and only for the rows the stage will read: the data order is a pure function
of the seed (:mod:`.order`), so the rows of all ``total_steps`` steps are known in advance, and a stage of 200
steps over 7,000 questions asks the teacher 800 of them, not 7,000. The answers are cached in the run folder,
shared by the stages (a stage2 question a stage1 row already asked costs nothing) and by reruns.

What changes in a row: a stage1 ``qa`` row's answers become the teacher's, one per question, all from the
document's compression as before (paraphrase rows keep theirs); a stage2/3 row's training target
(``answers[0]``) becomes the teacher's, its gold answers kept behind it. The teacher reads the documents the
student's prompt holds (a stage3 row: its gold documents first, cut to top-k). An empty teacher answer (after
``teacher_cut``) leaves the gold target in place.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..core.config import TrainConfig
from ..model.rows import Example, QAExample, Stage1Example
from ..model.teacher import TeacherCache, cut_answer, teacher_answers
from .order import stream_rows, total_steps

log = logging.getLogger(__name__)


def rows_read(n_rows: int, cfg: TrainConfig, world: int = 1) -> set[int]:
    """Indices of the rows a stage of ``cfg`` reads over all its steps (``n_rows`` rows in the file)."""
    per_step = cfg.micro_batch_size * cfg.grad_accum_steps * world  # as the trainer cuts its steps
    return set(stream_rows(0, total_steps(n_rows, cfg, world) * per_step, n_rows, cfg.seed))


def teacher_docs(example: QAExample, k: int) -> tuple[str, ...]:
    """The documents a stage2/3 student's prompt holds for ``example`` when it reads ``k`` of them: all of them
    in order when ``k`` covers them, else the gold ones first, cut to ``k`` (compare's oracle reading)."""
    if k >= len(example.docs):
        return example.docs
    order = list(dict.fromkeys(i for i in example.pos_index if 0 <= i < len(example.docs)))
    order += [i for i in range(len(example.docs)) if i not in order]
    return tuple(example.docs[i] for i in order[:k])


def _questions(example: Example, stage, config) -> list[tuple[str, tuple[str, ...]]]:
    """(question, documents read) the teacher answers for ``example``: none for a paraphrase row."""
    if isinstance(example, Stage1Example):
        return [(q, example.docs) for q in example.questions] if example.data_type == "qa" else []
    return [(example.question, teacher_docs(example, stage.docs_in_prompt(config, len(example.docs))))]


def _with_answers(example: Example, answers: list[str]) -> Example:
    """``example`` with the teacher's ``answers`` as its training targets (empty ones: the gold one stays)."""
    if not answers:  # a paraphrase row: nothing asked
        return example
    if isinstance(example, Stage1Example):
        return replace(example, answers=tuple(t or g for t, g in zip(answers, example.answers, strict=True)))
    return replace(example, answers=(answers[0], *example.answers)) if answers[0] else example


def distill_targets(model, stage, examples: list[Example], cfg: TrainConfig, cache_path: str | Path, *,
                    world: int = 1) -> list[Example]:
    """The rows ``stage`` trains on under ``cfg.targets``: ``examples`` (gold), each read row with the teacher's
    answers (teacher), or the gold rows followed by their teacher copies (both)."""
    if cfg.targets == "gold":
        return examples
    rows = list(examples) if cfg.targets == "teacher" else [*examples, *examples]
    first = 0 if cfg.targets == "teacher" else len(examples)  # where the teacher's copies start
    read = rows_read(len(rows), cfg, world)
    chosen = [i for i in range(first, len(rows)) if i in read]
    asked = [_questions(rows[i], stage, model.config) for i in chosen]
    cache = TeacherCache(cache_path)
    answers = teacher_answers(model, [q for qs in asked for q in qs], cache, max_new_tokens=cfg.teacher_max_new_tokens)
    answers = [cut_answer(a, cfg.teacher_cut) for a in answers]
    empty, at = sum(1 for a in answers if not a), 0
    for i, qs in zip(chosen, asked, strict=True):
        rows[i] = _with_answers(rows[i], answers[at : at + len(qs)])
        at += len(qs)
    log.info("%s targets: %s; %d rows read of %d, %d teacher answers for %d of them%s", stage.name, cfg.targets,
             len(read), len(rows), len(answers), len(chosen),
             f"; {empty} empty (their gold answers kept)" if empty else "")
    return rows
