"""The recipe: hardware plan -> configs -> model -> trainer, for one stage or all of them in order.

The one function the CLI, the notebooks and the demo call to train. Settings that change results
(model, LoRA, compression, learning rate, rows per step) are fixed in ``run.json`` by the first
session; what the hardware decides (dtype, 4-bit, attention, micro-batch x accumulation, gradient
checkpointing) is planned again each session (:mod:`.plan`) and appended to run.json's ``sessions``.

For example::

    train("runs/demo", "all", data_dir="data/", model_options={"base_model": "tiny-random"})
    # -> {'stage1': {...}, 'stage2': {...}, 'stage3': {...}}
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..core.config import ClaraConfig, TrainConfig
from ..core.hardware import DeviceInfo, dtype_name, library_versions
from ..core.layout import RunLayout
from ..model.data import check_training_file, read_jsonl
from ..model.modeling import ClaraModel
from ..model.stages import ALL, Stage
from .distill import distill_targets
from .lock import hold
from .plan import SessionPlan, plan_session
from .recipe import Recipe
from .record import SessionRecord
from .run import Run, stages_to_train
from .trainer import Trainer
from .update import process_state

log = logging.getLogger(__name__)

ALREADY_FINAL = "already final"


def train(run_dir, stage: str, *, data: str | None = None, data_dir: str | None = None,
          model_options: dict | None = None, train_options: dict | None = None, recipe: Recipe | None = None,
          init_from: str | None = None, base_path: str | None = None, device: DeviceInfo | None = None,
          take_over: bool = False) -> dict:
    """Train ``stage`` (or ``"all"``: every stage not yet final, in order) in ``run_dir``.

    ``model_options`` are :class:`~clara_lite.core.config.ClaraConfig` fields, ``train_options``
    :class:`~clara_lite.core.config.TrainConfig` fields; only the ones given override run.json or the
    hardware plan; ``recipe`` (a recipe file, :mod:`.recipe`) gives settings under both, each stage its own
    training settings, and is recorded in run.json. ``device`` plans for that device instead of the one probed (tests simulate GPUs).
    Returns ``{stage: summary or "already final"}``. The run folder is locked meanwhile
    (:mod:`.lock`): a second trainer there stops with a message naming this one. ``take_over``: take the
    lock of a trainer on another machine whose heartbeat is still fresh (its runtime is gone, the user says);
    recorded in run.json's ``takeovers``.
    """
    with hold(RunLayout(run_dir).lock_file, stage=stage, enabled=process_state().is_main_process,
              take_over=take_over) as lock:
        return _train(run_dir, stage, data=data, data_dir=data_dir, model_options=model_options,
                      train_options=train_options, recipe=recipe or Recipe(), init_from=init_from,
                      base_path=base_path, device=device, takeover=lock.taken_over if lock else None)


def _train(run_dir, stage: str, *, data, data_dir, model_options, train_options, recipe: Recipe, init_from,
           base_path, device, takeover: dict | None = None) -> dict:
    """:func:`train`, with the run folder's lock held (``takeover``: whose lock it replaced)."""
    run = Run(run_dir)
    if takeover is not None:
        run.record.takeovers.append(takeover)
        if run.exists:  # else the session's first save writes it
            run.save()
    model_options = {**recipe.model, **(model_options or {})}
    options = {s.name: {**recipe.train_options(s.name), **(train_options or {})} for s in stages_to_train(stage)}
    every = stage == ALL
    stages = stages_to_train(stage)
    # with "all", options are meant for the stages still to train: finished ones are not judged
    final = {s.name: run.is_final(s.name) for s in stages}  # hashes each final once
    judged = [s.name for s in stages if not every or not final[s.name]]
    for name in judged:
        run.check([name], model_options, options[name])
    results = {}
    for one in stages:
        if final[one.name]:
            log.info("%s is already final in %s: skipping", one.name, run.final_dir(one.name))
            results[one.name] = ALREADY_FINAL
            continue
        results[one.name] = train_one(
            run, one, data=None if every else data, data_dir=data_dir, model_options=dict(model_options),
            train_options=dict(options[one.name]), recipe=recipe,
            init_from=init_from if not every or one.previous is None else None, base_path=base_path,
            device=device)
    return results


def train_one(run: Run, stage: Stage, *, data, data_dir, model_options: dict, train_options: dict,
              init_from, base_path, device: DeviceInfo | None = None, recipe: Recipe | None = None) -> dict:
    """Plan this session, fix the run's settings, build the model and train ``stage`` to its final."""
    state = process_state()  # first, so each process loads onto its own device
    entry = run.record.stage(stage.name)
    if recipe is not None and recipe.path is not None:
        entry.recipe = recipe.record()
    if init_from:
        entry.init_from = str(init_from)
    start_dir = run.start_dir(stage)
    config = run.model_config(model_options)
    path = run.data_file(stage, data, data_dir)
    examples = read_jsonl(path, stage)
    check_training_file(path, stage, config)  # rows that would stop a step, found before run.json is written
    entry.data.rows = len(examples)

    session = plan_session(run, stage, examples, config, train_options, base=base_path or config.base_model,
                           quantization=model_options.get("quantization"), world=state.num_processes,
                           device=device)
    log.info("%s, this session: %s", stage.name, session.summary())
    for note in session.notes:
        log.warning("%s", note)
    cfg = run.train_config(stage.name, train_options, session.train_values())
    record = run.record_session(stage.name, session.profile, library_versions(), session.record(), cfg)

    def save() -> None:
        if state.is_main_process:  # several processes (DDP) share one run folder: one writer
            run.save()

    save()
    model = build_model(replace(config, quantization=session.quantization), session, seed=cfg.seed,
                        start_dir=start_dir, base_path=base_path)
    _record_attention(record, model, session)
    save()
    check_training_file(path, stage, model.config, model.tokenizer, model.tokens)  # prompts, in its tokens
    if cfg.targets != "gold":  # the teacher pass: the first process asks, the others then read its cache
        with state.main_process_first():
            examples = distill_targets(model, stage, examples, cfg, run.layout.teacher_answers,
                                       world=state.num_processes)

    def replanned(new: TrainConfig) -> None:  # out of memory: the trainer split the step further
        entry.train = replace(entry.train, micro_batch_size=new.micro_batch_size,
                              grad_accum_steps=new.grad_accum_steps)
        record.training.update(micro_batch_size=new.micro_batch_size, grad_accum_steps=new.grad_accum_steps)
        record.training.setdefault("notes", []).append(
            f"out of memory: micro-batch -> {new.micro_batch_size} x {new.grad_accum_steps} (same rows per step)")
        save()

    log.info("Training %s in %s on %d rows of %s", stage.name, run.layout.stage_dir(stage.name), len(examples), path)
    summary = Trainer(model, stage, examples, run.layout.stage_dir(stage.name), cfg, on_replan=replanned).train()
    entry.final = summary
    save()
    return summary


def build_model(config: ClaraConfig, session: SessionPlan, *, seed: int, start_dir: Path | None,
                base_path: str | None):
    """A fresh model for the first stage, else the saved model the stage starts from; either way in this
    session's dtype, attention and quantization (``config.quantization`` is the session's)."""
    if start_dir is None:
        return ClaraModel.from_base(config=config, base_path=base_path, dtype=session.dtype,
                                    attn_implementation=session.attn_implementation, seed=seed)
    load = {"dtype": session.dtype, "attn_implementation": session.attn_implementation,
            "quantization": session.quantization}
    if base_path:
        load["base_path"] = base_path
    return ClaraModel.from_pretrained(start_dir, **load)


def _record_attention(record: SessionRecord, model, session: SessionPlan) -> None:
    """run.json records the attention the loaded model runs, not the one planned (a failed flash-attn
    load falls back to sdpa)."""
    used = model.attn_implementation
    record.training["attn_implementation"] = used
    if session.quantization is None:  # the frozen weights' dtype (4-bit: uint8 blocks and fp32 norms)
        record.training["dtype"] = dtype_name(model.causal_lm.get_input_embeddings().weight.dtype)
    if used != session.attn_implementation:
        record.hardware["attn_implementation"] = used
        record.hardware["reasons"]["attn_implementation"] += f"; planned, but the load used {used}"
        log.warning("Attention: planned %s, the model runs %s", session.attn_implementation, used)
