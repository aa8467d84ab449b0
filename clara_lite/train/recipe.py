"""The recipe: hardware plan -> configs -> model -> trainer, for one stage or all of them in order.

The one function the CLI, the notebooks and the demo call to train. Settings that change results
(model, LoRA, compression, learning rate, rows per step) are fixed in ``run.json`` by the first
session; what the hardware decides (dtype, 4-bit, micro-batch) comes from the plan of this session.

>>> train("runs/demo", "all", data_dir="data/", model_options={"base_model": "tiny-random"})  # doctest: +SKIP
{'stage1': {...}, 'stage2': {...}, 'stage3': {...}}
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from ..config import ClaraConfig
from ..data import check_training_file, read_jsonl
from ..hardware import detect_hardware, library_versions
from ..layout import RunLayout
from ..model.base import resolve
from ..model.modeling import ClaraModel
from ..stages import ALL, Stage
from .lock import hold
from .run import Run, stages_to_train
from .trainer import Trainer, process_state

log = logging.getLogger(__name__)

ALREADY_FINAL = "already final"


def train(run_dir, stage: str, *, data: str | None = None, data_dir: str | None = None,
          model_options: dict | None = None, train_options: dict | None = None,
          init_from: str | None = None, base_path: str | None = None) -> dict:
    """Train ``stage`` (or ``"all"``: every stage not yet final, in order) in ``run_dir``.

    ``model_options`` are :class:`~clara_lite.config.ClaraConfig` fields, ``train_options``
    :class:`~clara_lite.config.TrainConfig` fields; only the ones given override run.json or the
    hardware plan. Returns ``{stage: summary or "already final"}``. The run folder is locked
    meanwhile (:mod:`.lock`): a second trainer there stops with a message naming this one.
    """
    with hold(RunLayout(run_dir).lock_file, stage=stage, enabled=process_state().is_main_process):
        return _train(run_dir, stage, data=data, data_dir=data_dir, model_options=model_options,
                      train_options=train_options, init_from=init_from, base_path=base_path)


def _train(run_dir, stage: str, *, data, data_dir, model_options, train_options, init_from, base_path) -> dict:
    """:func:`train`, with the run folder's lock held."""
    run = Run(run_dir)
    every = stage == ALL
    stages = stages_to_train(stage)
    # with "all", options are meant for the stages still to train: finished ones are not judged
    final = {s.name: run.is_final(s.name) for s in stages}  # hashes each final once
    judged = [s.name for s in stages if not every or not final[s.name]]
    run.check(judged, model_options or {}, train_options or {})
    results = {}
    for one in stages:
        if final[one.name]:
            log.info("%s is already final in %s: skipping", one.name, run.final_dir(one.name))
            results[one.name] = ALREADY_FINAL
            continue
        results[one.name] = train_one(
            run, one, data=None if every else data, data_dir=data_dir, model_options=dict(model_options or {}),
            train_options=dict(train_options or {}),
            init_from=init_from if not every or one.previous is None else None, base_path=base_path)
    return results


def train_one(run: Run, stage: Stage, *, data, data_dir, model_options: dict, train_options: dict,
              init_from, base_path) -> dict:
    """Plan this session, fix the run's settings, build the model and train ``stage`` to its final."""
    state = process_state()  # first, so each process loads onto its own device
    entry = run.record.stage(stage.name)
    if init_from:
        entry.init_from = str(init_from)
    start_dir = run.start_dir(stage)
    base_name = model_options.get("base_model") or (run.record.model.base_model if run.record.model else
                                                    ClaraConfig().base_model)
    profile = detect_hardware(model_params_b=resolve(base_path or base_name).params_b)
    if run.record.model is None and "quantization" not in model_options and profile.load_in_4bit:
        model_options["quantization"] = "4bit"  # e.g. a 7B base on a 15 GB T4: QLoRA
        log.info("Loading the base in 4-bit nf4: %s", profile.reason("load_in_4bit"))
    config = run.model_config(model_options)
    path = run.data_file(stage, data, data_dir)
    examples = read_jsonl(path, stage)
    check_training_file(path, stage, config)  # rows that would stop a step, found before run.json is written
    entry.data.rows = len(examples)

    # the plan's rows per step are for the whole step: N processes share them
    accum = max(1, math.ceil(profile.grad_accum_steps / state.num_processes))
    defaults = {"micro_batch_size": profile.micro_batch_size, "grad_accum_steps": accum,
                "mixed_precision": profile.mixed_precision, "gradient_checkpointing": profile.gradient_checkpointing}
    cfg = run.train_config(stage.name, train_options, defaults)
    run.record_session(stage.name, profile, library_versions(), cfg)
    if state.is_main_process:  # several processes (DDP) share one run folder: one writer
        run.save()

    model = build_model(config, profile, seed=cfg.seed, start_dir=start_dir, base_path=base_path)
    check_training_file(path, stage, model.config, model.tokenizer, model.tokens)  # prompts, in its tokens
    log.info("Training %s in %s on %d rows of %s", stage.name, run.layout.stage_dir(stage.name), len(examples), path)
    summary = Trainer(model, stage, examples, run.layout.stage_dir(stage.name), cfg).train()
    entry.final = summary
    if state.is_main_process:
        run.save()
    return summary


def build_model(config: ClaraConfig, profile, *, seed: int, start_dir: Path | None, base_path: str | None):
    """A fresh model for the first stage, else the saved model the stage starts from."""
    if start_dir is None:
        model = ClaraModel.from_base(base_path or config.base_model, dtype=profile.dtype,
                                     attn_implementation=profile.attn_implementation, seed=seed,
                                     **{k: v for k, v in config.to_dict().items() if k != "base_model"})
        model.config.base_model = config.base_model
        return model
    load = {"dtype": profile.dtype}
    if base_path:
        load["base_path"] = base_path
    return ClaraModel.from_pretrained(start_dir, **load)
