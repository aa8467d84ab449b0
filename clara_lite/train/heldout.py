"""Held-out evaluation while a stage trains (``--eval-data FILE --eval-steps N``) and the best step kept
(``--best-metric``), upstream's ``--do_eval_gen``.

Why: a training loss that falls says nothing about documents the model has not seen. Every
evaluation appends one row to the stage's ``metrics.jsonl``, its figures prefixed ``eval_`` and
its ``step`` the optimizer step it followed; it runs before that step's checkpoint is written, so
resuming (which drops rows after the checkpoint's step) keeps each evaluation exactly once. It
draws no random numbers of the run's (the RNG is forked), so training with evaluation gives the
same weights as without.

The file is read with the stage's own row parser when it can be: those rows give the held-out
loss, defined as the training loss is. Questions (stage2/3 rows, or each QA pair of a stage1 row)
are answered greedily and scored: EM, F1, cover-EM, and Recall@1 once the model retrieves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from pathlib import Path

import torch

from ..core.layout import BEST_DIR, KIND_CHECKPOINT, SUMMARY_FILE, write_json, write_manifest
from ..model.data import DataError, questions_of, read_jsonl
from ..model.evaluation import evaluate_model
from ..model.saving import save_model
from ..model.stages import STAGES, StepTotals
from . import checkpoint as ckpt

log = logging.getLogger(__name__)

PREFIX = "eval_"
LOWER_IS_BETTER = ("loss",)
MAX_NEW_TOKENS = 32


def read_heldout(path, stage) -> tuple[list | None, list]:
    """``(rows for the held-out loss or None, questions)`` from ``path``: rows of ``stage``'s own shape
    give both; rows of another stage's shape give questions only."""
    try:
        rows = read_jsonl(path, stage)
        return rows, questions_of(rows)
    except DataError as own:
        for other in STAGES.values():
            if other.row != stage.row:
                with contextlib.suppress(DataError):
                    return None, questions_of(read_jsonl(path, other))
        raise DataError(f"--eval-data: {own}", own.problems) from None


class HeldOut:
    """The held-out rows of one stage, its evaluation, and the best step so far (``<stage>/best``)."""

    def __init__(self, path, stage, stage_dir: Path, cfg):
        self.stage, self.cfg = stage, cfg
        self.loss_rows, questions = read_heldout(path, stage)
        self.questions = questions[: cfg.eval_questions or None]
        if not self.loss_rows and not self.questions:
            raise ValueError(f"--eval-data {path}: no rows to evaluate {stage.name} on")
        self.best_dir = Path(stage_dir) / BEST_DIR
        self.best_value: float | None = None
        log.info("held-out: %s loss rows, %d questions from %s", len(self.loss_rows or ()), len(self.questions), path)

    def due(self, step: int, total: int) -> bool:
        return step == total or bool(self.cfg.eval_steps and step % self.cfg.eval_steps == 0)

    @torch.no_grad()
    def evaluate(self, model, collate) -> dict:
        """``eval_*`` figures of ``model`` now; leaves it in eval mode (the caller switches back)."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            model.eval()
            row = self._loss(model, collate) if self.loss_rows else {}
            if self.questions:
                scores = evaluate_model(model, self.questions, retrieve=model.has_retriever,
                                        max_new_tokens=MAX_NEW_TOKENS)
                scores.pop("predictions")
                row.update(scores)
        return {PREFIX + key: value for key, value in row.items()}

    def _loss(self, model, collate) -> dict:
        """The stage's loss over every held-out row, as one optimizer step over them would average it."""
        size = self.cfg.micro_batch_size
        batches = [collate(self.loss_rows[i : i + size]) for i in range(0, len(self.loss_rows), size)]
        totals, summed = StepTotals.of(batches), {}
        for batch in batches:
            loss, metrics = self.stage.loss(model, batch, totals)
            for key, value in {"loss": loss.item(), **metrics}.items():
                summed[key] = summed.get(key, 0.0) + value
        return summed

    # ------------------------------------------------------------------ the best step

    @property
    def metric(self) -> str | None:
        return self.cfg.best_metric and PREFIX + self.cfg.best_metric

    def resume(self, step: int) -> None:
        """Forget a ``best`` written after ``step`` (its evaluation is dropped from the metrics and redone)."""
        summary = self.best_dir / SUMMARY_FILE
        if not self.metric or not summary.is_file():
            return
        best = _read_json(summary)
        if best.get("step", math.inf) > step or best.get("metric") != self.metric:
            shutil.rmtree(self.best_dir, ignore_errors=True)
        else:
            self.best_value = best["value"]

    def consider(self, row: dict, model, step: int) -> bool:
        """Save ``model`` as ``best`` when ``row`` beats the best so far on the chosen metric."""
        value = row.get(self.metric) if self.metric else None
        if value is None:
            return False
        lower = self.cfg.best_metric in LOWER_IS_BETTER
        if self.best_value is not None and not (value < self.best_value if lower else value > self.best_value):
            return False
        summary = {"stage": self.stage.name, "step": step, "metric": self.metric, "value": value, "heldout": row}

        def write() -> Path:
            shutil.rmtree(self.best_dir, ignore_errors=True)
            save_model(model, self.best_dir)
            write_json(self.best_dir / SUMMARY_FILE, summary)
            write_manifest(self.best_dir, KIND_CHECKPOINT, {"stage": self.stage.name, "step": step})
            return self.best_dir

        if ckpt.with_retries(write, attempts=self.cfg.retry_attempts, delay_s=self.cfg.retry_delay_s) is None:
            return False
        self.best_value = value
        log.info("%s: best %s %.4f at step %d -> %s", self.stage.name, self.metric, value, step, self.best_dir)
        return True


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
