"""The training loop of one stage, on ``accelerate``: mixed precision, distribution (DDP) and
gradient sync come from the library (:mod:`.update`: one optimizer step); this module adds what Colab
needs: checkpoints by steps and minutes, exact resume, graceful stops on SIGTERM/SIGINT, a metrics log
and a loss curve.

Data order is a pure function of (seed, epoch) (:mod:`.order`), so a resume needs no data-loader state
and may use another micro-batch size than the session before (another GPU). An optimizer step's loss is
averaged over the whole step, on every process, so how a step is cut into micro-batches and processes
changes memory and speed, never the gradient. On CPU one row per forward pass is fastest and leanest:
no padding, one row's activations alive at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import signal
import time
from pathlib import Path

import torch

from ..core.config import TrainConfig, is_quantized
from ..core.errors import ClaraError
from ..core.layout import (
    CHECKPOINTS_DIR,
    FINAL_DIR,
    KIND_CHECKPOINT,
    LOSS_PLOT,
    MANIFEST,
    METRICS_FILE,
    MODEL_DIR,
    SUMMARY_FILE,
    step_dir,
    step_folders,
    write_json,
    write_manifest,
)
from ..model.saving import save_model
from . import checkpoint as ckpt
from .faults import folder_bytes, space_note
from .heldout import HeldOut
from .metrics_log import MetricsLog
from .order import stream_rows, total_steps
from .plan import oom_advice, smaller_micro
from .update import SKIPPED, any_process, make_accelerator, optimizer_step

log = logging.getLogger(__name__)


def make_optimizer(name: str, params, *, lr: float, weight_decay: float):
    """AdamW from torch, or one of bitsandbytes' (8-bit states; paged: moved to CPU memory when the GPU runs
    short). Their states checkpoint and resume like torch's (:mod:`.checkpoint` keeps nested state)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    import bitsandbytes as bnb

    classes = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
               "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}
    return classes[name](params, lr=lr, weight_decay=weight_decay)


class TrainingInterrupted(ClaraError, RuntimeError):
    """Raised after a SIGTERM/SIGINT stop has saved its checkpoint."""
    code = "interrupted"
    exit_status = 130


class OutOfMemory(ClaraError, RuntimeError):
    """Even one row at a time does not fit; the message lists the exact next options as ``clara-lite
    train`` flags, ``notebook_advice`` the same as 00_setup's parameters."""
    code = "out_of_memory"
    exit_status = 4

    def __init__(self, message: str, notebook_advice: str = ""):
        super().__init__(message)
        self.notebook_advice = notebook_advice or message


class TrainingDiverged(ClaraError, RuntimeError):
    """Raised after ``max_nonfinite_steps`` skipped steps in a row, once the last good weights are saved."""
    code = "diverged"
    exit_status = 3


class _StopFlag:
    """SIGTERM / SIGINT (a notebook's interrupt button) ask for a checkpoint, then a stop."""

    def __init__(self):
        self.requested: str | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: nothing to install
                pass
        return self

    def _handle(self, signum, _frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint after this step, then stopping", self.requested)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """One stage's training, torchtune-recipe style: ``setup`` (accelerator, optimizer, scheduler),
    ``resume`` (the newest complete checkpoint), ``train`` (the step loop, with logging, timed saves
    and stop signals), ``save`` (a step checkpoint) and ``finish`` (the stage's final model).

    For example::

        summary = Trainer(model, get_stage("stage1"), rows, Path("runs/x/stage1"), TrainConfig()).train()
    """

    def __init__(self, model, stage, examples, stage_dir: Path, cfg: TrainConfig, on_replan=None):
        if not examples:
            raise ValueError("no training rows")
        self.model, self.stage, self.examples, self.cfg = model, stage, examples, cfg
        self.on_replan = on_replan  # called with the new TrainConfig after an out-of-memory split
        self.stage_dir = Path(stage_dir)
        self.checkpoints = self.stage_dir / CHECKPOINTS_DIR
        self.metrics_log = MetricsLog(self.stage_dir / METRICS_FILE, stage.name)
        self.heldout = HeldOut(cfg.eval_data, stage, self.stage_dir, cfg) if cfg.eval_data else None

    # ------------------------------------------------------------------ setup / resume

    def setup(self) -> None:
        from transformers import get_scheduler

        cfg, model = self.cfg, self.model
        self.acc = make_accelerator(cfg, self.stage_dir)
        torch.manual_seed(cfg.seed)
        self.stage.prepare(model)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(cfg.optim, self.params, lr=cfg.learning_rate(self.stage),
                                   weight_decay=cfg.weight_decay)
        self.steps = total_steps(len(self.examples), cfg, self.acc.num_processes)
        self.scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * self.steps),
                                       num_training_steps=self.steps)
        self.wrapped, self.optimizer = self.acc.prepare(model, optimizer)
        self.collate = self.stage.collator(model)
        self.progress = ckpt.Progress(stage=self.stage.name, step=0, micro_batches=0, total_steps=self.steps)

    def resume(self) -> None:
        latest = None
        for _, folder in reversed(ckpt.complete_checkpoints(self.checkpoints)):  # newest first
            ckpt.check_same_model(folder, self.model.config)
            try:
                self.progress = ckpt.load_checkpoint(folder, self.model, self.optimizer, self.scheduler,
                                                     self.acc.scaler)
            except ckpt.CheckpointUnusable as err:  # nothing was applied: an older one may do
                log.warning("Skipping checkpoint %s: its manifest matches but it cannot be used (%s)", folder, err)
                continue
            latest = folder
            break
        if latest is not None:
            if self.progress.total_steps != self.steps:
                raise ValueError(f"{latest} was made for {self.progress.total_steps} steps, this run plans "
                                 f"{self.steps}: keep max_steps/epochs/batch settings when resuming")
            log.info("Resuming %s from %s (step %d/%d)", self.stage.name, latest, self.progress.step, self.steps)
        if self.acc.is_main_process:
            self.metrics_log.truncate_after(self.progress.step)
            if self.heldout:
                self.heldout.resume(self.progress.step)
        self._started = time.monotonic() - self.progress.elapsed_s

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    # ------------------------------------------------------------------ the step loop

    def train(self) -> dict:
        """Train to the end (resuming if possible), write ``final`` and return its summary. Raises
        :class:`TrainingInterrupted` after a requested stop has been checkpointed."""
        from tqdm.auto import tqdm

        self.setup()
        self.resume()
        cfg, acc, progress, steps = self.cfg, self.acc, self.progress, self.steps
        if cfg.report_to:
            acc.init_trackers(f"clara_lite-{self.stage.name}")
        last_save = time.monotonic()
        bar = tqdm(total=steps, initial=progress.step, desc=self.stage.name, disable=not acc.is_local_main_process,
                   dynamic_ncols=True)
        window: list[dict] = []
        tokens, window_start = 0, time.monotonic()
        self.wrapped.train()
        bad_in_a_row = 0
        with _StopFlag() as stop:
            while progress.step < steps:
                step_metrics, step_tokens = self.step()
                bad_in_a_row = bad_in_a_row + 1 if step_metrics.get(SKIPPED) else 0
                if bad_in_a_row:
                    log.warning("%s step %d: non-finite loss or gradient (loss %s): step skipped (%d in a row)",
                                self.stage.name, progress.step, step_metrics.get("loss"), bad_in_a_row)
                if bad_in_a_row >= cfg.max_nonfinite_steps:
                    self.log_window([*window, step_metrics], 0.0)
                    bar.close()
                    raise TrainingDiverged(self._diverged(bad_in_a_row, self.save()))
                window.append(step_metrics)
                tokens += step_tokens
                bar.update(1)
                bar.set_postfix(loss=f"{window[-1]['loss']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if progress.step % cfg.log_steps == 0 or progress.step == steps:
                    self.log_window(window, tokens / max(time.monotonic() - window_start, 1e-9))
                    window, tokens, window_start = [], 0, time.monotonic()
                if self.heldout and self.heldout.due(progress.step, steps):  # before this step's checkpoint
                    self.evaluate()
                stopping = stop.requested  # a signal arriving after this line counts at the next step
                if acc.num_processes > 1:  # all processes vote, so all stop after the same step
                    stopping = (stopping or "a stop on another process") if any_process(acc, bool(stopping)) else None
                due = (cfg.save_steps and progress.step % cfg.save_steps == 0) or (
                    cfg.save_minutes and time.monotonic() - last_save >= cfg.save_minutes * 60)
                saved = None
                if (due or stopping) and progress.step < steps:
                    saved = self.save()
                    last_save = time.monotonic()
                if stopping and progress.step < steps:  # at the last step, finishing is the better checkpoint
                    bar.close()
                    where = f"checkpoint in {saved}" if saved or not acc.is_main_process else \
                        f"this step's checkpoint could not be written; the newest complete one in {self.checkpoints} is kept"
                    raise TrainingInterrupted(
                        f"{self.stage.name} stopped by {stopping} at step {progress.step}/{steps}; "
                        f"{where}. Run the same command again to resume.")
        bar.close()
        if cfg.report_to:
            acc.end_training()
        summary = self.finish()
        acc.wait_for_everyone()  # the next stage, on every process, starts from the final main wrote
        return summary

    def _diverged(self, n: int, saved: Path | None) -> str:
        step = self.progress.step
        kept = (f"saved in {saved}" if saved else "not saved (see the log); the newest complete checkpoint in "
                f"{self.checkpoints} is kept")
        return (f"{self.stage.name} stopped at step {step}/{self.steps}: {n} steps in a row had a non-finite loss or "
                f"gradient and were skipped, so the weights are those of step {step - n}, {kept}. Likely causes: "
                "a learning rate too high (--lr; a new --run-dir to change it), fp16 overflowing on a T4 "
                "(--mixed-precision no), or rows whose answer does not fit the decoder (clara-lite data validate "
                "FILE --stage STAGE). Fix the cause, then run the same command again to resume.")

    def step(self) -> tuple[dict, int]:
        """One optimizer step = ``grad_accum_steps`` micro-batches on each process -> (metrics, tokens).
        Out of GPU memory, the same step is tried again as twice as many half-size micro-batches
        (same rows, same update), down to one row at a time."""
        while True:
            batches, tokens = self._step_batches()
            try:
                metrics = optimizer_step(self.acc, self.wrapped, self.stage, batches, self.params, self.optimizer,
                                         self.cfg.max_grad_norm)
                break
            except torch.OutOfMemoryError as err:
                del batches
                self._split_step(err)
        self.scheduler.step()
        self.progress.step += 1
        self.progress.micro_batches += self.cfg.grad_accum_steps * self.acc.num_processes
        return metrics, tokens

    def _step_batches(self) -> tuple[list[dict], int]:
        """This process's micro-batches of the current step: its share of the step's rows of the stream."""
        cfg, world, rank = self.cfg, self.acc.num_processes, self.acc.process_index
        size = cfg.micro_batch_size
        start = self.progress.step * size * cfg.grad_accum_steps * world
        batches, tokens = [], 0
        for j in range(cfg.grad_accum_steps):
            rows = stream_rows(start + (j * world + rank) * size, size, len(self.examples), cfg.seed)
            batches.append(self.collate([self.examples[i] for i in rows]))
            tokens += _count_tokens(batches[-1]) * world
        return batches, tokens

    def _split_step(self, err: BaseException) -> None:
        """After an out-of-memory error: half the micro-batch, twice the accumulation, or the next options."""
        self.optimizer.zero_grad(set_to_none=True)  # the failed attempt's partial gradients
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cfg, world = self.cfg, self.acc.num_processes
        per_process = cfg.micro_batch_size * cfg.grad_accum_steps
        smaller = smaller_micro(cfg.micro_batch_size, per_process) if world == 1 else None  # DDP: all or none
        if smaller is None:
            facts = {"quantized": is_quantized(self.model.config.quantization), "rows_per_step": per_process * world,
                     "micro": cfg.micro_batch_size, "checkpointing": cfg.gradient_checkpointing}
            raise OutOfMemory(oom_advice(self.model.config, self.stage, **facts),
                              oom_advice(self.model.config, self.stage, **facts, notebook=True)) from err
        self.cfg = dataclasses.replace(cfg, micro_batch_size=smaller, grad_accum_steps=per_process // smaller)
        log.warning("Out of GPU memory at step %d with %d row(s) per pass: trying the step again as %d x %d "
                    "(the same %d rows, the same update)", self.progress.step + 1, cfg.micro_batch_size, smaller,
                    per_process // smaller, per_process)
        if self.on_replan is not None:
            self.on_replan(self.cfg)

    def log_window(self, window: list[dict], tokens_per_s: float) -> None:
        progress, acc = self.progress, self.acc
        row = _mean(window)
        skipped = sum(1 for r in window if r.get(SKIPPED))
        row.pop(SKIPPED, None)
        if skipped:
            row[SKIPPED] = skipped
        row.update(step=progress.step, lr=self.scheduler.get_last_lr()[0], elapsed_s=round(self.elapsed(), 2),
                   tokens_per_s=round(tokens_per_s, 1))
        if acc.is_main_process:
            self.metrics_log.append(row)
        log.info("%s step %d/%d loss %.4f lr %.2e %.0f tok/s", self.stage.name, progress.step, self.steps,
                 row.get("loss", math.nan), row["lr"], row["tokens_per_s"])
        if self.cfg.report_to:
            acc.log({f"train/{k}": v for k, v in row.items()}, step=progress.step)

    def evaluate(self) -> dict | None:
        """Score the held-out rows now (main process), log them, keep the best step; then train on."""
        row = None
        if self.acc.is_main_process:
            row = self.heldout.evaluate(self.model, self.collate)
            self.metrics_log.append({**row, "step": self.progress.step, "elapsed_s": round(self.elapsed(), 2)})
            log.info("%s step %d held-out: %s", self.stage.name, self.progress.step,
                     "  ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k != "eval_count"))
            self.heldout.consider(row, self.model, self.progress.step)
        self.wrapped.train()
        self.acc.wait_for_everyone()
        return row

    # ------------------------------------------------------------------ saving

    def save(self) -> Path | None:
        """A step checkpoint (main process only), retried on write errors; older ones pruned after."""
        if not self.acc.is_main_process:
            return None
        target = step_dir(self.checkpoints, self.progress.step)
        self.progress.elapsed_s = self.elapsed()
        self.metrics_log.flush()  # rows up to this step reach the disk before a checkpoint claims the step
        saved = ckpt.with_retries(
            lambda: ckpt.save_checkpoint(target, self.model, self.optimizer, self.scheduler, self.acc.scaler,
                                         self.progress, train=self.cfg.to_dict()),
            attempts=self.cfg.retry_attempts, delay_s=self.cfg.retry_delay_s, cleanup=lambda: _remove(target),
        )
        if saved is not None:
            log.info("Checkpoint %s saved", saved)
            ckpt.prune(self.checkpoints, self.cfg.keep)
            self.metrics_log.flush()
            self.metrics_log.plot(self.stage_dir / LOSS_PLOT)
        else:
            log.error("%s was not written: %s. Training goes on; the newest complete checkpoint is kept",
                      target, space_note(self.checkpoints, self._save_bytes()))
        return saved

    def _save_bytes(self, model_only: bool = False) -> int:
        """What a save writes, from the newest checkpoint on disk (its model part for a final)."""
        with_manifest = [f for _, f in step_folders(self.checkpoints) if (f / MANIFEST).is_file()]
        if not with_manifest:
            return 0
        return folder_bytes(with_manifest[-1] / MODEL_DIR if model_only else with_manifest[-1])

    def finish(self) -> dict:
        """Write ``final`` (model, summary, manifest) on the main process; return the summary."""
        progress, cfg = self.progress, self.cfg
        rows = self.metrics_log.rows()
        last = next((r for r in reversed(rows) if "loss" in r), {})  # the last training row, not an evaluation
        summary = {"stage": progress.stage, "steps": progress.step, "elapsed_s": round(self.elapsed(), 1),
                   "final_metrics": {k: v for k, v in last.items() if k not in ("step", "stage")}}
        if self.heldout:
            held = next((r for r in reversed(rows) if any(k.startswith("eval_") for k in r)), {})
            summary["heldout"] = {k: v for k, v in held.items() if k.startswith("eval_")}
            if self.heldout.best_value is not None:
                summary["best"] = {"metric": self.heldout.metric, "value": self.heldout.best_value}
        if not self.acc.is_main_process:
            return summary
        final = self.stage_dir / FINAL_DIR
        model = self.model
        if progress.stage not in model.config.trained_stages:
            model.config.trained_stages.append(progress.stage)

        def write() -> Path:
            _remove(final)
            save_model(model, final)
            write_json(final / SUMMARY_FILE, summary)
            write_manifest(final, KIND_CHECKPOINT, {"stage": progress.stage, "step": progress.step})
            return final

        if ckpt.with_retries(write, attempts=max(cfg.retry_attempts, 6), delay_s=cfg.retry_delay_s,
                             cleanup=lambda: _remove(final)) is None:
            newest = ckpt.latest_checkpoint(self.checkpoints)
            raise OSError(f"could not write {final}: {space_note(self.stage_dir, self._save_bytes(model_only=True))}. "
                          + (f"The newest complete checkpoint, {newest}, is intact" if newest else
                             "No checkpoint was written yet") + ": free space (on Colab: empty Drive's bin), then "
                          "run the same command again to finish")
        self.metrics_log.flush()
        self.metrics_log.plot(self.stage_dir / LOSS_PLOT)
        log.info("%s finished: %d steps, final model in %s", progress.stage, progress.step, final)
        return summary


def train_stage(model, stage, examples, stage_dir: Path, cfg: TrainConfig) -> dict:
    """Train ``stage`` on ``examples``, checkpointing into ``stage_dir``; resume if possible.

    Writes ``stage_dir/final`` and returns its summary (see :class:`Trainer`).
    """
    return Trainer(model, stage, examples, stage_dir, cfg).train()


def _remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _count_tokens(batch: dict) -> int:
    total = 0
    for key in ("enc", "dec", "query"):
        if key in batch:
            total += int(batch[key]["attention_mask"].sum())
    return total


def _mean(rows: list[dict]) -> dict:
    """Each key's mean over the rows with a finite value for it (a skipped step's NaN stays out)."""
    keys = {k for r in rows for k in r}
    out = {}
    for k in sorted(keys):
        values = [r[k] for r in rows if k in r and math.isfinite(r[k])]
        if values:
            out[k] = sum(values) / len(values)
    return out
