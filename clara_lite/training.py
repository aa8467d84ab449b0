"""The training loop of one stage, on ``accelerate``: mixed precision, distribution (DDP) and
gradient sync come from the library; this module adds what Colab needs: checkpoints by steps and
minutes, exact resume, graceful stops on SIGTERM/SIGINT, a metrics log and a loss curve.

Data order is a pure function of (seed, epoch): micro-batch ``i`` of the run is always the same
rows, so resuming at micro-batch ``i`` needs no data-loader state and skips seen rows instantly.

An optimizer step's loss is averaged over the whole step, on every process (see
``stages.StepTotals`` and :func:`optimizer_step`), so how a step is cut into micro-batches and
processes changes memory and speed, never the gradient. On CPU one row per forward pass is
fastest and leanest: no padding, one row's activations alive at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .metrics_log import MetricsLog
from .stages import StepTotals

log = logging.getLogger(__name__)

DEFAULT_LR = {"stage1": 1e-4, "stage2": 1e-4, "stage3": 5e-6}
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"


class TrainingInterrupted(RuntimeError):
    """Raised after a SIGTERM/SIGINT stop has saved its checkpoint."""


@dataclass
class TrainConfig:
    """How one stage trains. ``None`` fields are filled from the hardware profile / stage."""

    lr: float | None = field(default=None, metadata={"help": "peak LR (1e-4 stage1/2, 5e-6 stage3)"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data when max_steps is unset"})
    micro_batch_size: int = field(default=4, metadata={"help": "rows per forward pass (memory and speed only)"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps spent warming up"})
    scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'fp16' (with GradScaler) or 'bf16'"})
    gradient_checkpointing: bool = False
    save_steps: int | None = field(default=None, metadata={"help": "checkpoint every N optimizer steps"})
    save_minutes: float | None = field(default=20.0, metadata={"help": "checkpoint every M minutes"})
    keep: int = field(default=2, metadata={"help": "complete checkpoints kept"})
    log_steps: int = 10
    report_to: list[str] = field(default_factory=list, metadata={"help": "accelerate trackers, e.g. tensorboard"})
    retry_attempts: int = 4
    retry_delay_s: float = 2.0

    def __post_init__(self):
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.micro_batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("micro_batch_size and grad_accum_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")


def total_steps(n_rows: int, cfg: TrainConfig, world_size: int = 1) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_step = cfg.micro_batch_size * cfg.grad_accum_steps * world_size
    return max(1, math.ceil(cfg.epochs * n_rows / per_step))


def micro_batch_rows(i: int, n_rows: int, size: int, seed: int) -> list[int]:
    """Row indices of global micro-batch ``i``: epochs are seeded permutations, cut into batches."""
    per_epoch = math.ceil(n_rows / size)
    epoch, within = divmod(i, per_epoch)
    return list(_epoch_order(n_rows, seed, epoch)[within * size : (within + 1) * size])


@functools.lru_cache(maxsize=2)
def _epoch_order(n_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    """One epoch's permutation, drawn once (a step on CPU reads 16 one-row micro-batches of it)."""
    return tuple(torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


def _cpu_only() -> bool:
    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


def process_state():
    """This process's place in the run (alone, or one of several under ``accelerate launch`` /
    ``torchrun``). Set up before a model is loaded: it pins the process to its own GPU, so a 4-bit
    base lands there (bitsandbytes loads onto the current CUDA device), and on a machine without
    GPUs it makes torchrun's processes a gloo DDP group (accelerate does that only when told CPU)."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu_only())


def make_accelerator(cfg: TrainConfig, project_dir: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    # One process may train several stages (a notebook): forget the previous stage's precision
    # settings; the process-group state (PartialState) is kept.
    AcceleratorState._reset_state()
    acc = Accelerator(
        cpu=_cpu_only(),
        mixed_precision=cfg.mixed_precision,
        # accumulation is optimizer_step's: its losses are already step-wide means, which
        # accelerate's division by the number of micro-batches would undo
        gradient_accumulation_steps=1,
        log_with=cfg.report_to or None,
        project_dir=str(project_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if cfg.mixed_precision == "fp16" and acc.scaler is None and acc.device.type == "cpu":
        # accelerate runs no fp16 AMP on CPU; torch does. Turning it on lets the T4 code path
        # (fp16 autocast + GradScaler) run, and be tested, on a CPU machine.
        acc.native_amp = True
        acc.scaler = torch.amp.GradScaler("cpu")
    return acc


def optimizer_step(acc, model, stage, batches: list[dict], params, optimizer, max_grad_norm: float | None) -> dict:
    """One optimizer step over a step's micro-batches: forward + backward each (gradients of all
    but the last kept local under DDP), clip, step. Returns the step's loss and metrics, the same
    as one forward over all rows of all processes would give.

    Under DDP the loss terms' denominators are counted over every process, and each process's
    loss is multiplied by their number, because DDP averages gradients where a one-batch loss
    would sum them: a token counts the same whichever process it landed on."""
    totals, world = StepTotals.of(batches), acc.num_processes
    if world > 1:
        counts = torch.tensor(dataclasses.astuple(totals), device=acc.device)
        totals = StepTotals(*(int(c) for c in acc.reduce(counts, reduction="sum").tolist()))
    summed: dict[str, float] = {}
    for i, batch in enumerate(batches):
        sync = contextlib.nullcontext() if i == len(batches) - 1 else acc.no_sync(model)
        with sync:
            with acc.autocast():
                loss, metrics = model(batch, stage, totals)
            acc.backward(loss * world if world > 1 else loss)
        for key, value in {"loss": loss.item(), **metrics}.items():
            summed[key] = summed.get(key, 0.0) + value
    if max_grad_norm:
        acc.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if world > 1:  # every process holds its share of each figure (same keys: they follow the totals)
        keys = sorted(summed)
        values = acc.reduce(torch.tensor([summed[k] for k in keys], device=acc.device), reduction="sum")
        summed = dict(zip(keys, values.tolist(), strict=True))
    return summed


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


def train_stage(model, stage, examples, stage_dir: Path, cfg: TrainConfig) -> dict:
    """Train ``stage`` on ``examples``, checkpointing into ``stage_dir``; resume if possible.

    Writes ``stage_dir/final`` and returns its summary. Raises :class:`TrainingInterrupted`
    after a requested stop has been checkpointed.
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    if not examples:
        raise ValueError("no training rows")
    stage_dir = Path(stage_dir)
    checkpoints = stage_dir / CHECKPOINTS_DIR
    acc = make_accelerator(cfg, stage_dir)
    torch.manual_seed(cfg.seed)
    stage.prepare(model)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    params = [p for p in model.parameters() if p.requires_grad]
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[stage.name]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    steps = total_steps(len(examples), cfg, acc.num_processes)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps),
                              num_training_steps=steps)
    wrapped, optimizer = acc.prepare(model, optimizer)
    collate = stage.collator(model)

    progress = ckpt.Progress(stage=stage.name, step=0, micro_batches=0, total_steps=steps)
    latest = ckpt.latest_checkpoint(checkpoints)
    if latest is not None:
        progress = ckpt.load_checkpoint(latest, model, optimizer, scheduler, acc.scaler)
        if progress.total_steps != steps:
            raise ValueError(f"{latest} was made for {progress.total_steps} steps, this run plans {steps}: "
                             "keep max_steps/epochs/batch settings when resuming")
        log.info("Resuming %s from %s (step %d/%d)", stage.name, latest, progress.step, steps)
    metrics_log = MetricsLog(stage_dir / "metrics.jsonl", stage.name)
    if acc.is_main_process:
        metrics_log.truncate_after(progress.step)
    if cfg.report_to:
        acc.init_trackers(f"clara_lite-{stage.name}")

    def save(target: Path) -> Path | None:
        if not acc.is_main_process:
            return None
        progress.elapsed_s = elapsed()
        return ckpt.with_retries(
            lambda: ckpt.save_checkpoint(target, model, optimizer, scheduler, acc.scaler, progress),
            attempts=cfg.retry_attempts, delay_s=cfg.retry_delay_s,
            cleanup=lambda: _remove(target),
        )

    started = time.monotonic() - progress.elapsed_s
    elapsed = lambda: time.monotonic() - started  # noqa: E731
    last_save = time.monotonic()
    world, rank, g = acc.num_processes, acc.process_index, cfg.grad_accum_steps
    bar = tqdm(total=steps, initial=progress.step, desc=stage.name, disable=not acc.is_local_main_process,
               dynamic_ncols=True)
    window: list[dict] = []
    tokens, window_start = 0, time.monotonic()
    wrapped.train()
    with _StopFlag() as stop:
        while progress.step < steps:
            batches = []
            for _ in range(g):  # one optimizer step = g micro-batches on each of `world` processes
                rows = micro_batch_rows(progress.micro_batches + rank, len(examples), cfg.micro_batch_size, cfg.seed)
                progress.micro_batches += world
                batches.append(collate([examples[i] for i in rows]))
                tokens += _count_tokens(batches[-1]) * world
            window.append(optimizer_step(acc, wrapped, stage, batches, params, optimizer, cfg.max_grad_norm))
            scheduler.step()
            progress.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1]['loss']:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if progress.step % cfg.log_steps == 0 or progress.step == steps:
                row = _mean(window)
                row.update(step=progress.step, lr=scheduler.get_last_lr()[0], elapsed_s=round(elapsed(), 2),
                           tokens_per_s=round(tokens / max(time.monotonic() - window_start, 1e-9), 1))
                if acc.is_main_process:
                    metrics_log.append(row)
                log.info("%s step %d/%d loss %.4f lr %.2e %.0f tok/s", stage.name, progress.step, steps,
                         row["loss"], row["lr"], row["tokens_per_s"])
                if cfg.report_to:
                    acc.log({f"train/{k}": v for k, v in row.items()}, step=progress.step)
                window, tokens, window_start = [], 0, time.monotonic()
            stopping = stop.requested  # a signal arriving after this line counts at the next step
            if world > 1:  # all processes vote, so all stop after the same step
                stopping = (stopping or "a stop on another process") if _any_process(acc, bool(stopping)) else None
            due = (cfg.save_steps and progress.step % cfg.save_steps == 0) or (
                cfg.save_minutes and time.monotonic() - last_save >= cfg.save_minutes * 60)
            if (due or stopping) and progress.step < steps:
                if save(ckpt.step_dir(checkpoints, progress.step)) is not None:
                    ckpt.prune(checkpoints, cfg.keep)
                    metrics_log.plot(stage_dir / "loss.png")
                last_save = time.monotonic()
            if stopping and progress.step < steps:  # at the last step, finishing is the better checkpoint
                bar.close()
                raise TrainingInterrupted(
                    f"{stage.name} stopped by {stopping} at step {progress.step}/{steps}; "
                    f"checkpoint in {checkpoints}. Run the same command again to resume.")
    bar.close()
    if cfg.report_to:
        acc.end_training()
    summary = _finish(model, stage_dir, progress, metrics_log, cfg, acc.is_main_process, elapsed())
    acc.wait_for_everyone()  # the next stage, on every process, starts from the final main wrote
    return summary


def _any_process(acc, mine: bool) -> bool:
    """Whether any process asked to stop (all call this at the same step: a collective)."""
    return bool(acc.reduce(torch.tensor([float(mine)], device=acc.device), reduction="sum").item())


def _finish(model, stage_dir: Path, progress, metrics_log: MetricsLog, cfg, main: bool, elapsed_s: float) -> dict:
    import json

    from .saving import save_model

    last = metrics_log.rows()[-1] if metrics_log.rows() else {}
    summary = {"stage": progress.stage, "steps": progress.step, "elapsed_s": round(elapsed_s, 1),
               "final_metrics": {k: v for k, v in last.items() if k not in ("step", "stage")}}
    if not main:
        return summary
    final = stage_dir / FINAL_DIR
    if progress.stage not in model.config.trained_stages:
        model.config.trained_stages.append(progress.stage)

    def write() -> Path:
        _remove(final)
        save_model(model, final)
        (final / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        ckpt.write_manifest(final, {"stage": progress.stage, "step": progress.step})
        return final

    if ckpt.with_retries(write, attempts=max(cfg.retry_attempts, 6), delay_s=cfg.retry_delay_s,
                         cleanup=lambda: _remove(final)) is None:
        raise OSError(f"could not write {final}; the last checkpoint in {stage_dir / CHECKPOINTS_DIR} is intact: "
                      "free space / check Drive, then rerun to finish")
    metrics_log.plot(stage_dir / "loss.png")
    log.info("%s finished: %d steps, final model in %s", progress.stage, progress.step, final)
    return summary


def _remove(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)


def _count_tokens(batch: dict) -> int:
    total = 0
    for key in ("enc", "dec", "query"):
        if key in batch:
            total += int(batch[key]["attention_mask"].sum())
    return total


def _mean(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in sorted(keys)}


def stage_is_final(stage_dir: Path) -> bool:
    final = Path(stage_dir) / FINAL_DIR
    return final.is_dir() and ckpt.verify(final) is None
