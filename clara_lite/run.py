"""A run folder: settings in ``run.json``, one sub-folder per stage, stages chained in order.

    D/run.json              model settings, per-stage data (sha256) and training settings,
                            hardware and library versions of each session
    D/<stage>/checkpoints/step-NNNNNN/   D/<stage>/final/   D/<stage>/metrics.jsonl   D/<stage>/loss.png

``run.json`` is the source of truth: a resumed (or Colab-reconnected) session reads its settings
from there; options given again must agree with it, and a disagreement stops with the difference.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

from .checkpoint import complete_checkpoints, sha256_file
from .config import ClaraConfig
from .stages import ORDER, get_stage
from .training import CHECKPOINTS_DIR, FINAL_DIR, TrainConfig, process_state, stage_is_final, train_stage

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_FORMAT = 1
# training settings that change the result; the others (save cadence, logging) may change on resume
RESULT_KEYS = ("lr", "max_steps", "epochs", "micro_batch_size", "grad_accum_steps", "warmup_ratio",
               "scheduler", "weight_decay", "max_grad_norm", "seed")


class RunError(ValueError):
    """The run folder and the request disagree, or a stage is asked for out of order."""


def _write_json(path: Path, data: dict) -> None:
    """In place, flushed and fsync'd: Drive does not do renames reliably."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


class Run:
    """The run folder ``root`` and its ``run.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / RUN_FILE
        self.data = json.loads(path.read_text()) if path.is_file() else {"format": RUN_FORMAT, "stages": {}}

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json(self.root / RUN_FILE, self.data)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def is_final(self, stage: str) -> bool:
        return stage_is_final(self.stage_dir(stage))

    def final_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / FINAL_DIR

    def newest_final(self) -> Path | None:
        for stage in reversed(ORDER):
            if self.is_final(stage):
                return self.final_dir(stage)
        return None

    # ----------------------------------------------------------- settings

    def model_config(self, explicit: dict) -> ClaraConfig:
        """Model settings: from run.json when present (explicit options must agree), else new."""
        saved = self.data.get("model")
        if saved is None:
            config = ClaraConfig(**explicit)
            self.data["model"] = {k: v for k, v in config.to_dict().items() if k != "trained_stages"}
            return config
        _check_same("model setting", saved, explicit, self.root)
        return ClaraConfig.from_dict({**saved, "trained_stages": []})

    def train_config(self, stage: str, explicit: dict, defaults: dict) -> TrainConfig:
        entry = self.data["stages"].setdefault(stage, {})
        saved = entry.get("train")
        if saved is None:
            cfg = TrainConfig(**{**defaults, **explicit})
            entry["train"] = asdict(cfg)
            return cfg
        self._check_train(stage, saved, explicit)
        known = {f.name for f in fields(TrainConfig)}
        merged = {**{k: v for k, v in saved.items() if k in known}, **explicit}
        entry["train"] = merged
        return TrainConfig(**merged)

    def check(self, stages, model_options: dict, train_options: dict) -> None:
        """Fail early (before skipping finished stages) when options contradict run.json."""
        if "model" in self.data:
            _check_same("model setting", self.data["model"], model_options, self.root)
        for stage in stages:
            saved = self.data["stages"].get(stage, {}).get("train")
            if saved:
                self._check_train(stage, saved, train_options)

    def _check_train(self, stage: str, saved: dict, explicit: dict) -> None:
        _check_same(f"{stage} training setting", {k: saved[k] for k in RESULT_KEYS if k in saved},
                    {k: v for k, v in explicit.items() if k in RESULT_KEYS}, self.root)

    def data_file(self, stage: str, data: str | None, data_dir: str | None) -> Path:
        entry = self.data["stages"].setdefault(stage, {})
        saved = entry.get("data")
        if data is None and data_dir is not None:
            data = str(Path(data_dir) / f"{stage}.jsonl")
        if data is None:
            if saved is None:
                raise RunError(f"No data for {stage}: pass --data FILE.jsonl or --data-dir DIR "
                               f"(with {stage}.jsonl in it)")
            data = saved["path"]
        path = Path(data).resolve()
        if not path.is_file():
            raise RunError(f"{stage} data file {path} does not exist")
        digest = sha256_file(path)
        # hashing the checkpoints is only worth it when the data did change
        if saved is not None and saved["sha256"] != digest and complete_checkpoints(
                self.stage_dir(stage) / CHECKPOINTS_DIR):
            raise RunError(f"{path} changed since {stage} started in {self.root} (sha256 {saved['sha256'][:12]} -> "
                           f"{digest[:12]}): restore the file, or start a new --run-dir")
        entry["data"] = {"path": str(path), "sha256": digest}
        return path

    def record_session(self, stage: str, profile) -> None:
        from .hardware import library_versions

        sessions = self.data.setdefault("sessions", [])
        sessions.append({"stage": stage, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "hardware": profile.to_dict(), "versions": library_versions()})

    def stage_status(self, stage: str) -> str:
        """"final", "checkpoint step N" or "not started" (a final stage's checkpoints are not hashed)."""
        if self.is_final(stage):
            return "final"
        cks = complete_checkpoints(self.stage_dir(stage) / CHECKPOINTS_DIR)
        return f"checkpoint step {cks[-1][0]}" if cks else "not started"

    def status(self) -> dict:
        return {stage: self.stage_status(stage) for stage in ORDER}


def _check_same(what: str, saved: dict, explicit: dict, root: Path) -> None:
    diffs = [f"{k}: run.json has {saved.get(k)!r}, this command asks {v!r}"
             for k, v in explicit.items() if k in saved and saved[k] != v]
    if diffs:
        raise RunError(f"{what}s conflict with {root / RUN_FILE}:\n  " + "\n  ".join(diffs)
                       + "\nDrop those options to continue this run, or use a new --run-dir.")


def _previous_model_dir(run: Run, stage: str) -> Path | None:
    idx = ORDER.index(stage)
    if idx == 0:
        return None
    prev = ORDER[idx - 1]
    if run.is_final(prev):
        return run.final_dir(prev)
    state = run.stage_status(prev)
    raise RunError(f"{stage} starts from {prev}/final, which does not exist in {run.root} ({prev}: {state}). "
                   f"Run `clara-lite train --stage {prev} --run-dir {run.root}` first (or --stage all), "
                   f"or start {stage} from another model with --init-from DIR|ZIP.")


def train(run_dir, stage: str, *, data: str | None = None, data_dir: str | None = None,
          model_options: dict | None = None, train_options: dict | None = None,
          init_from: str | None = None, base_path: str | None = None) -> dict:
    """Train ``stage`` (or ``"all"``: every stage not yet final, in order) in ``run_dir``.

    Returns ``{stage: summary or "already final"}``.
    """
    run = Run(run_dir)
    stages = list(ORDER) if stage == "all" else [get_stage(stage).name]
    # with "all", options are meant for the stages still to train: finished ones are not judged
    final = {s: run.is_final(s) for s in stages}  # hashes each final once; a stage turns final only in its turn
    judged = [s for s in stages if stage != "all" or not final[s]]
    run.check(judged, model_options or {}, train_options or {})
    results = {}
    for name in stages:
        if final[name]:
            log.info("%s is already final in %s: skipping", name, run.final_dir(name))
            results[name] = "already final"
            continue
        one_data = data if stage != "all" else None
        results[name] = _train_one(run, name, one_data, data_dir, dict(model_options or {}),
                                   dict(train_options or {}), init_from if stage != "all" or name == "stage1" else None,
                                   base_path)
    return results


def _train_one(run: Run, name: str, data, data_dir, model_options, train_options, init_from, base_path) -> dict:
    from .data import read_jsonl
    from .hardware import detect_hardware
    from .modeling import ClaraModel
    from .models import resolve

    state = process_state()  # first, so each process loads onto its own device
    main = state.is_main_process
    entry = run.data["stages"].setdefault(name, {})
    init_from = init_from or entry.get("init_from")
    start_dir = Path(init_from) if init_from else _previous_model_dir(run, name)
    base_name = model_options.get("base_model") or run.data.get("model", {}).get("base_model") or ClaraConfig().base_model
    profile = detect_hardware(model_params_b=resolve(base_path or base_name).params_b)
    if "model" not in run.data and "quantization" not in model_options and profile.load_in_4bit:
        model_options["quantization"] = "4bit"  # e.g. a 7B base on a 15 GB T4: QLoRA
        log.info("Loading the base in 4-bit nf4: %s", profile.reason("load_in_4bit"))
    config = run.model_config(model_options)
    path = run.data_file(name, data, data_dir)
    examples = read_jsonl(path, name)
    entry["data"]["rows"] = len(examples)
    if init_from:
        entry["init_from"] = str(init_from)

    # the plan's rows per step are for the whole step: N processes share them
    accum = max(1, math.ceil(profile.grad_accum_steps / state.num_processes))
    defaults = {"micro_batch_size": profile.micro_batch_size, "grad_accum_steps": accum,
                "mixed_precision": profile.mixed_precision, "gradient_checkpointing": profile.gradient_checkpointing}
    cfg = run.train_config(name, train_options, defaults)
    run.record_session(name, profile)
    if main:  # several processes (DDP) share one run folder: one writer
        run.save()

    load = {"dtype": profile.dtype}
    if base_path:
        load["base_path"] = base_path
    if start_dir is None:
        model = ClaraModel.from_base(base_path or config.base_model, dtype=profile.dtype,
                                     attn_implementation=profile.attn_implementation, seed=cfg.seed,
                                     **{k: v for k, v in config.to_dict().items() if k != "base_model"})
        model.config.base_model = config.base_model
    else:
        model = ClaraModel.from_pretrained(start_dir, **load)
    log.info("Training %s in %s on %d rows of %s", name, run.stage_dir(name), len(examples), path)
    summary = train_stage(model, get_stage(name), examples, run.stage_dir(name), cfg)
    run.data["stages"][name]["final"] = summary
    if main:
        run.save()
    return summary
