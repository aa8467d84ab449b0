"""Checkpoints that can be trusted on a Google Drive mount.

Drive caches writes on the VM and syncs later; renames there have lost data and hard links fail.
So nothing is renamed: files are written in place, flushed and fsync'd, and a checkpoint is
complete only when its ``manifest.json`` (written last, listing sha256 and size of every file)
matches what is on disk. A folder without a valid manifest is never chosen for resuming.

    step-000040/
        model/                  our model format (adapters, added-token rows, config, tokenizer)
        optimizer.safetensors   optimizer state tensors       optimizer.json   param groups
        rng.safetensors         torch (and CUDA) RNG states   state.json       progress, scheduler,
        manifest.json           written last                                   scaler, python RNG
"""

from __future__ import annotations

import errno
import json
import logging
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from ..core.config import ClaraConfig
from ..core.layout import (
    ADAPTER_WEIGHTS,
    ADAPTERS_DIR,
    CONFIG_FILE,
    KIND_CHECKPOINT,
    MODEL_DIR,
    OPTIMIZER_META,
    OPTIMIZER_TENSORS,
    RNG_FILE,
    STATE_FILE,
    step_folders,
    verify,
    write_manifest,
)
from ..model.saving import save_model
from .faults import as_write_error

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training is: enough, with the RNG states, to continue exactly."""

    stage: str
    step: int  # optimizer steps done
    micro_batches: int  # micro-batches consumed (data position = this, in the seeded order)
    total_steps: int
    elapsed_s: float = 0.0


def complete_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """Valid checkpoints, oldest first; invalid ones are skipped with a warning."""
    found = []
    for step, folder in step_folders(checkpoints):
        problem = verify(folder, KIND_CHECKPOINT)
        if problem:
            log.warning("Skipping checkpoint %s: %s", folder, problem)
            continue
        found.append((step, folder))
    return found


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = complete_checkpoints(checkpoints)
    return found[-1][1] if found else None


def model_config_file(folder: Path) -> Path:
    """The ``clara_config.json`` a step checkpoint (under ``model/``) or a final folder carries."""
    nested = Path(folder) / MODEL_DIR / CONFIG_FILE
    return nested if nested.is_file() else Path(folder) / CONFIG_FILE


def config_differences(saved: ClaraConfig, wanted: ClaraConfig, ignore=("trained_stages",)) -> list[str]:
    """``name: saved there, wanted here`` for every model setting that differs (``trained_stages``
    aside: it grows as stages finish)."""
    a, b = saved.to_dict(), wanted.to_dict()
    return [f"{k}: {a[k]!r} there, {b[k]!r} here" for k in a if k not in ignore and a[k] != b.get(k)]


def check_same_model(folder: Path, config: ClaraConfig) -> None:
    """A ValueError naming ``folder``'s config file when the model it was saved from had other
    settings than ``config``: its adapters would load into the wrong model without a word. The
    base model's name is not compared (``--base-path`` may name a local copy of it)."""
    path = model_config_file(folder)
    diffs = config_differences(ClaraConfig.load(path.parent), config, ignore=("trained_stages", "base_model"))
    if diffs:
        raise ValueError(f"{folder} was saved from a model with other settings ({path}):\n  " + "\n  ".join(diffs)
                         + "\nResume with that checkpoint's settings (drop those options), or use a new --run-dir.")


# --------------------------------------------------------------------------- state <-> files


def _optimizer_files(optimizer) -> tuple[dict, dict]:
    """The optimizer's state as safetensors (``"<param>.<key>"``, nested keys joined by ``/``: bitsandbytes keeps
    its quantization state in a dict) and JSON for the rest."""
    sd = optimizer.state_dict()
    tensors, other = {}, {}

    def split(prefix: str, state: dict, extra: dict) -> None:
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{key}"] = value.detach().cpu().contiguous()
            elif isinstance(value, dict):
                split(f"{prefix}{key}/", value, extra.setdefault(key, {}))
            else:
                extra[key] = value

    for idx, state in sd["state"].items():
        split(f"{idx}.", state, other.setdefault(str(idx), {}))
    return tensors, {"param_groups": sd["param_groups"], "other": other}


def _load_optimizer(optimizer, meta: dict, tensors: dict) -> None:
    state: dict[int, dict] = {}
    for idx, extra in meta["other"].items():
        state[int(idx)] = json.loads(json.dumps(extra))  # a deep copy to fill
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        *path, last = key.split("/")
        node = state.setdefault(int(idx), {})
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]], "numpy": [np_state[0], *map(float, np_state[2:])]}


def _restore_rng(folder: Path, meta: dict) -> None:
    tensors = load_file(folder / RNG_FILE)
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))


def save_checkpoint(folder: Path, model, optimizer, scheduler, scaler, progress: Progress,
                    train: dict | None = None) -> Path:
    """Write a complete checkpoint into ``folder`` (any previous content there is discarded).

    ``train`` (the stage's TrainConfig) is kept in ``state.json``: with the model's own
    ``clara_config.json`` it lets a run whose run.json is lost be rebuilt from its checkpoints."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_model(model, folder / MODEL_DIR)
    tensors, meta = _optimizer_files(optimizer)
    save_file(tensors, folder / OPTIMIZER_TENSORS)
    (folder / OPTIMIZER_META).write_text(json.dumps(meta))
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, folder / RNG_FILE)
    state = {
        "progress": asdict(progress),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_meta,
        "train": train,
    }
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    write_manifest(folder, KIND_CHECKPOINT, {"step": progress.step, "stage": progress.stage})
    return folder


class CheckpointUnusable(ValueError):
    """A checkpoint whose manifest matches but whose content does not fit the model being trained."""


def _read_checkpoint(folder: Path, model, optimizer) -> tuple[dict, dict, dict, dict]:
    """Everything a resume needs, read and checked against ``model`` and ``optimizer`` before any
    of it is applied, so a checkpoint that does not fit leaves them untouched (the caller then
    tries an older one). Raises :class:`CheckpointUnusable` naming the file."""
    from peft import get_peft_model_state_dict

    where = folder
    try:
        adapters = {}
        for name in model.adapter_names:
            where = folder / MODEL_DIR / ADAPTERS_DIR / name / ADAPTER_WEIGHTS
            weights = load_file(where)
            expected = get_peft_model_state_dict(model.lm, adapter_name=name, save_embedding_layers=False)
            wrong = sorted(k for k in expected.keys() | weights.keys()
                           if k not in weights or k not in expected or weights[k].shape != expected[k].shape)
            if wrong:
                raise CheckpointUnusable(f"{where}: {len(wrong)} tensors missing, extra or of another shape "
                                         f"(first: {wrong[0]})")
            if not all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()):
                raise CheckpointUnusable(f"{where}: holds non-finite weights")
            adapters[name] = weights
        where = folder / STATE_FILE
        state = json.loads(where.read_text())
        Progress(**state["progress"])  # the keys it must have
        where = folder / OPTIMIZER_META
        meta = json.loads(where.read_text())
        where = folder / OPTIMIZER_TENSORS
        tensors = load_file(where)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if len(meta["param_groups"]) != len(optimizer.param_groups):
            raise CheckpointUnusable(f"{folder / OPTIMIZER_META}: {len(meta['param_groups'])} parameter groups, "
                                     f"the optimizer has {len(optimizer.param_groups)}")
        for key, value in tensors.items():
            idx, name = key.split(".", 1)
            if not 0 <= int(idx) < len(params) or (value.dim() and value.shape != params[int(idx)].shape):
                raise CheckpointUnusable(f"{where}: {key} does not fit the optimizer's parameters")
        where = folder / RNG_FILE
        rng = load_file(where)
        if "torch" not in rng or "numpy" not in rng:
            raise CheckpointUnusable(f"{where}: no torch/numpy RNG state")
    except CheckpointUnusable:
        raise
    except Exception as err:  # a file that matches its hash but is not what we wrote: SafetensorError, KeyError...
        raise CheckpointUnusable(f"{where}: {type(err).__name__}: {err}") from None
    return adapters, state, {"meta": meta, "tensors": tensors}, rng


def load_checkpoint(folder: Path, model, optimizer, scheduler, scaler) -> Progress:
    """Restore adapters, optimizer, scheduler, scaler and RNG states from a verified checkpoint
    (:class:`CheckpointUnusable`, with nothing changed, when its content does not fit)."""
    from peft import set_peft_model_state_dict

    adapters, state, opt, _ = _read_checkpoint(folder, model, optimizer)
    for name, weights in adapters.items():
        set_peft_model_state_dict(model.lm, weights, adapter_name=name)
    _load_optimizer(optimizer, opt["meta"], opt["tensors"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    _restore_rng(folder, state["rng"])
    return Progress(**state["progress"])


# --------------------------------------------------------------------------- faults and pruning


def with_retries(action: Callable[[], Path], *, attempts: int = 4, delay_s: float = 2.0,
                 cleanup: Callable[[], None] | None = None) -> Path | None:
    """Run ``action``; on a failed write (ENOSPC, a Drive hiccup, however the writer words it:
    :func:`.faults.as_write_error`) clean up and retry with back-off. Other exceptions propagate.

    Returns None when every attempt failed: the caller keeps training on its last good checkpoint.
    Waits ``delay_s``, then twice that, and so on (tenacity's exponential wait).
    """

    def failed(state: RetryCallState) -> None:  # after each failed write: say it, remove the half-written folder
        err = as_write_error(state.outcome.exception())
        hint = " (disk full: free space on Drive)" if err.errno == errno.ENOSPC else ""
        log.warning("Checkpoint write failed (attempt %d/%d): %s%s", state.attempt_number, attempts, err, hint)
        if cleanup is not None:
            try:
                cleanup()
            except OSError:
                pass

    retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=delay_s),
                        retry=retry_if_exception(lambda exc: as_write_error(exc) is not None), after=failed)
    try:
        return retrying(action)
    except RetryError:
        log.error("Giving up on this checkpoint after %d attempts; training goes on and the previous "
                  "checkpoint is kept", attempts)
        return None


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and incomplete folders older than
    the newest complete one. Only ever called after a newer checkpoint is complete."""
    complete = complete_checkpoints(checkpoints)
    if not complete:
        return
    keep_paths = {p for _, p in complete[-max(keep, 1):]}
    newest = complete[-1][0]
    for step, folder in step_folders(checkpoints):
        if folder not in keep_paths and step < newest:
            shutil.rmtree(folder, ignore_errors=True)
