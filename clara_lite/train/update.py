"""One optimizer update on ``accelerate``: the process's place in the run, the Accelerator for a stage's
precision, and a step over its micro-batches whose loss and gradient do not depend on how the step is cut
into micro-batches and processes (non-finite steps skipped, as GradScaler does for fp16 overflows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import torch

from ..core.config import TrainConfig
from ..model.stages import StepTotals


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


SKIPPED = "skipped_steps"  # a metrics key: steps skipped for a non-finite loss or gradient


def optimizer_step(acc, model, stage, batches: list[dict], params, optimizer, max_grad_norm: float | None) -> dict:
    """One optimizer step over a step's micro-batches: forward + backward each (gradients of all
    but the last kept local under DDP), clip, step. Returns the step's loss and metrics, the same
    as one forward over all rows of all processes would give; with ``skipped_steps: 1`` when a
    non-finite loss or gradient skipped the update.

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
    # A non-finite loss or gradient skips the step, as GradScaler does for fp16 overflows: one bad
    # batch must not turn every weight into NaN. A non-finite loss (a row with nothing to score,
    # an overflow in the forward pass) is skipped before anything touches the gradients; non-finite
    # gradients of a finite loss (fp16's overflow in backward) go to the scaler, which skips the
    # step and lowers its scale. Losses are each process's own, so that vote is collective.
    loss_ok = all(math.isfinite(v) for v in summed.values())
    if world > 1:
        loss_ok = not any_process(acc, not loss_ok)
    skipped = not loss_ok
    if loss_ok:
        norm = acc.clip_grad_norm_(params, max_grad_norm) if max_grad_norm else None
        # the same on every process (DDP all-reduced them); the clipping norm says it for free
        grads_ok = bool(torch.isfinite(norm)) if torch.is_tensor(norm) else _finite_grads(params)
        if grads_ok or acc.scaler is not None:
            optimizer.step()  # with a scaler and inf/NaN gradients: skipped by the scaler, scale lowered
        skipped = not grads_ok or bool(getattr(optimizer, "step_was_skipped", False))
    optimizer.zero_grad(set_to_none=True)
    if world > 1:  # every process holds its share of each figure (same keys: they follow the totals)
        keys = sorted(summed)
        values = acc.reduce(torch.tensor([summed[k] for k in keys], device=acc.device), reduction="sum")
        summed = dict(zip(keys, values.tolist(), strict=True))
    if skipped:
        summed[SKIPPED] = 1.0
    return summed


def _finite_grads(params) -> bool:
    """Whether every gradient is finite: one device sync per device, not one per tensor."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return all(bool(torch.stack([f for f in flags if f.device == d]).all()) for d in {f.device for f in flags})


def any_process(acc, mine: bool) -> bool:
    """Whether any process asked to stop (all call this at the same step: a collective)."""
    return bool(acc.reduce(torch.tensor([float(mine)], device=acc.device), reduction="sum").item())
