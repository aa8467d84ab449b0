"""A run folder: its ``run.json`` record, one sub-folder per stage, stages chained in order.

``run.json`` is the source of truth: a resumed (or Colab-reconnected) session reads its settings
from there; options given again must agree with it, and a disagreement stops with the difference.
Until a stage has a checkpoint its options may still change (nothing was trained with them yet).

run.json is rewritten in place (no renames on Drive), its previous version first copied to
``run.json.bak``. A torn or unreadable run.json is replaced by that copy; without one, or with
run.json deleted, the run's own checkpoints say what it was: each carries its model's
``clara_config.json`` and its stage's TrainConfig (``state.json``), so a resume with other model
settings is refused either way.
Where things are on disk is :class:`clara_lite.core.layout.RunLayout`; what run.json holds is
:class:`~clara_lite.train.record.RunRecord`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.config import ClaraConfig, TrainConfig
from ..core.errors import ClaraError
from ..core.layout import (
    CONFIG_FILE,
    KIND_CHECKPOINT,
    MANIFEST,
    STATE_FILE,
    UPSTREAM_ADAPTERS,
    RunLayout,
    sha256_file,
    step_folders,
    verify,
    write_json_keeping_copy,
)
from ..model.stages import ALL, ORDER, STAGES, Stage, get_stage, previous_stage
from .checkpoint import complete_checkpoints, model_config_file
from .record import DataRecord, RunRecord, RunRecordError, SessionRecord

log = logging.getLogger(__name__)


class RunError(ClaraError, ValueError):
    """The run folder and the request disagree, or a stage is asked for out of order."""
    code = "run_error"


@dataclass(frozen=True)
class StageStatus:
    """Where a stage of a run stands: final, at a complete checkpoint, or not started."""

    final: bool = False
    step: int | None = None  # the newest complete checkpoint's step (not looked up for a final stage)

    @property
    def started(self) -> bool:
        return self.final or self.step is not None

    def __str__(self) -> str:
        if self.final:
            return "final"
        return f"checkpoint step {self.step}" if self.step is not None else "not started"


class Run:
    """The run folder ``root``: its layout and its ``run.json`` record."""

    def __init__(self, root: str | Path):
        self.layout = RunLayout(root)
        self.root = self.layout.root
        self.model_source = self.layout.run_file  # where the model settings come from (for messages)
        self.record = self._load()

    @property
    def exists(self) -> bool:
        return self.layout.run_file.is_file()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            write_json_keeping_copy(self.layout.run_file, self.layout.run_backup, self.record.to_dict())
        except OSError as err:  # a full Drive: nothing is lost, the previous record is in the copy
            raise OSError(err.errno, f"could not write {self.layout.run_file} ({err.strerror or err}); its previous "
                          f"version is kept in {self.layout.run_backup}, which the next run reads: free space "
                          "(on Colab: empty Drive's bin), then run the same command again") from None

    # ----------------------------------------------------------- reading run.json, or what replaces it

    def _load(self) -> RunRecord:
        run_file, backup = self.layout.run_file, self.layout.run_backup
        if not run_file.is_file():
            record = self._rebuild()
            if record.model is not None:
                log.warning("%s has checkpoints but no %s: the model settings are taken from %s and options "
                            "are checked against them", self.root, run_file.name, self.model_source)
            return record
        try:
            return RunRecord.load(run_file)
        except RunRecordError as err:
            problem = str(err)
        if backup.is_file():
            try:
                record = RunRecord.load(backup)
            except RunRecordError as err:
                log.warning("%s", err)
            else:
                log.warning("%s\nUsing %s, the copy kept before its last rewrite (its newest change, such as the "
                            "last session's entry, may be missing); run.json is rewritten from it", problem, backup)
                self.model_source = backup
                return record
        record = self._rebuild()
        how = (f"rebuilt from the run's checkpoints (model settings from {self.model_source}); the data files "
               "must be given again (--data / --data-dir)") if record.model is not None else "nothing in the run " \
            "folder to rebuild it from: a new record is started"
        log.warning("%s\nNo readable %s either: the record is %s", problem, backup.name, how)
        return record

    def _rebuild(self) -> RunRecord:
        """A record from the run's own saved models: the newest one's model settings, and each
        stage's TrainConfig from its newest complete checkpoint (verified: this path is rare)."""
        record = RunRecord()
        for stage in reversed(ORDER):
            found = complete_checkpoints(self.layout.checkpoints(stage))
            newest = found[-1][1] if found else None
            if newest is not None:
                try:
                    train = json.loads((newest / STATE_FILE).read_text()).get("train")
                    if train:
                        record.stage(stage).train = TrainConfig.from_dict(train, str(newest / STATE_FILE))
                except (OSError, ValueError) as err:
                    log.warning("%s: %s", newest / STATE_FILE, err)
            if record.model is None:
                saved = self.layout.final(stage) if self.is_final(stage) else newest
                if saved is not None:
                    self.model_source = model_config_file(saved)
                    record.model = replace(ClaraConfig.load(self.model_source.parent), trained_stages=[])
        return record

    def _trained(self, stage: str) -> bool:
        """Whether ``stage`` trained with its options: a final or a checkpoint with a manifest (not hashed)."""
        final = self.layout.final(stage)
        return (final / MANIFEST).is_file() or any(
            (folder / MANIFEST).is_file() for _, folder in step_folders(self.layout.checkpoints(stage)))

    def _trained_any(self) -> bool:
        return any(self._trained(stage) for stage in ORDER)

    # ----------------------------------------------------------- stages

    def final_dir(self, stage: str) -> Path:
        return self.layout.final(stage)

    def is_final(self, stage: str) -> bool:
        final = self.layout.final(stage)
        return final.is_dir() and verify(final, KIND_CHECKPOINT) is None

    def newest_final(self) -> Path | None:
        for stage in reversed(ORDER):
            if self.is_final(stage):
                return self.final_dir(stage)
        return None

    def stage_status(self, stage: str) -> StageStatus:
        """A final stage's checkpoints are not hashed."""
        if self.is_final(stage):
            return StageStatus(final=True)
        cks = complete_checkpoints(self.layout.checkpoints(stage))
        return StageStatus(step=cks[-1][0]) if cks else StageStatus()

    def status(self) -> dict[str, StageStatus]:
        return {stage: self.stage_status(stage) for stage in ORDER}

    def start_dir(self, stage: Stage) -> Path | None:
        """The model ``stage`` starts from: its ``--init-from``, else the previous stage's final
        (None for the first stage). Raises :class:`RunError` naming what to run first."""
        init_from = self.record.stage(stage.name).init_from
        if init_from:
            return _saved_model(Path(init_from))
        prev = previous_stage(stage)
        if prev is None:
            return None
        if self.is_final(prev.name):
            return self.final_dir(prev.name)
        final = self.final_dir(prev.name)
        if final.is_dir():
            raise RunError(f"{stage.name} starts from {final}, which is damaged: {verify(final, KIND_CHECKPOINT)}. "
                           f"Run `clara-lite train --stage {prev.name} --run-dir {self.root}` again: it resumes from "
                           f"{prev.name}'s newest complete checkpoint and writes its final again.")
        raise RunError(f"{stage.name} starts from {prev.name}/final, which does not exist in {self.root} "
                       f"({prev.name}: {self.stage_status(prev.name)}). Run `clara-lite train --stage {prev.name} "
                       f"--run-dir {self.root}` first (or --stage all; in Colab: {prev.name}'s notebook), or start "
                       f"{stage.name} from another model with --init-from DIR|ZIP.")

    # ----------------------------------------------------------- settings

    def model_config(self, explicit: dict) -> ClaraConfig:
        """Model settings: from run.json when present (explicit options must agree once a stage has
        trained with them; before that they may change), else new. ``quantization`` is a session's
        choice (see :mod:`.plan`): never a conflict, kept as first given."""
        saved = self.record.model
        if saved is None:
            self.record.model = ClaraConfig(**explicit)
            return replace(self.record.model, trained_stages=[])
        if self._trained_any():
            _check_same("model setting", saved.to_dict(), _without_session_keys(explicit), self.model_source)
        else:
            self.record.model = replace(saved, **explicit)  # validated again
        return replace(self.record.model, trained_stages=[])

    def train_config(self, stage: str, explicit: dict, session: dict) -> TrainConfig:
        """The stage's training settings for this session: the result-changing ones from run.json (given
        options must agree), the hardware ones (``session``: micro-batch, accumulation, precision,
        checkpointing, planned to keep run.json's rows per step) from this session's plan."""
        entry = self.record.stage(stage)
        if entry.train is None:
            entry.train = TrainConfig(**{**explicit, **session})
            return entry.train
        if self._trained(stage):
            self._check_train(stage, entry.train, explicit)
        entry.train = replace(entry.train, **{**explicit, **session})
        return entry.train

    def check(self, stages, model_options: dict, train_options: dict) -> None:
        """Fail early (before skipping finished stages) when options contradict what already trained."""
        if self.record.model is not None and self._trained_any():
            _check_same("model setting", self.record.model.to_dict(), _without_session_keys(model_options),
                        self.model_source)
        for stage in stages:
            saved = self.record.stages.get(stage)
            if saved is not None and saved.train is not None and self._trained(stage):
                self._check_train(stage, saved.train, train_options)

    def _check_train(self, stage: str, saved: TrainConfig, explicit: dict) -> None:
        result = {k: v for k, v in saved.to_dict().items() if k in TrainConfig.RESULT_KEYS}
        result["rows_per_step"] = saved.step_rows()  # run.json files before rows_per_step: micro x accumulation
        notes = {}
        if result.get("lr") is None:  # compare the rate the stage trains with, and name it so
            result["lr"], notes["lr"] = saved.learning_rate(get_stage(stage)), f"{stage}'s default"
        _check_same(f"{stage} training setting", result,
                    {k: v for k, v in explicit.items() if k in TrainConfig.RESULT_KEYS}, self.model_source,
                    notes)

    def data_file(self, stage: Stage, data: str | None, data_dir: str | None) -> Path:
        entry = self.record.stage(stage.name)
        saved = entry.data
        if data is None and data_dir is not None:
            data = str(Path(data_dir) / stage.data_file)
        if data is None and saved is None:
            data = self._beside_other_stages(stage)  # the data folder is kept across stages
        if data is None:
            if saved is None:
                raise RunError(f"No data for {stage.name}: pass --data FILE.jsonl or --data-dir DIR "
                               f"(with {stage.data_file} in it)")
            data = saved.path
        path = Path(data).resolve()
        if path.is_dir():
            raise RunError(f"{stage.name} data {path} is a folder, not a file: pass --data {path / stage.data_file} "
                           f"(a JSONL file) or --data-dir {path}")
        if not path.is_file():
            raise RunError(f"{stage.name} data file {path} does not exist")
        digest = sha256_file(path)
        # hashing the checkpoints is only worth it when the data did change
        if saved is not None and saved.sha256 != digest and complete_checkpoints(self.layout.checkpoints(stage.name)):
            if Path(saved.path) != path:
                raise RunError(f"{stage.name} in {self.root} trained on {saved.path} (sha256 {saved.sha256[:12]}); "
                               f"this command gives another file, {path} ({digest[:12]}): pass the same file to "
                               "resume, or start a new --run-dir")
            raise RunError(f"{path} changed since {stage.name} started in {self.root} (sha256 {saved.sha256[:12]} -> "
                           f"{digest[:12]}): restore the file, or start a new --run-dir")
        entry.data = DataRecord(path=str(path), sha256=digest, rows=saved.rows if saved else None)
        return path

    def _beside_other_stages(self, stage: Stage) -> str | None:
        """``stage``'s file in the folder another stage of this run trained from, when it is there."""
        for other in self.record.stages.values():
            if other.data is not None:
                candidate = Path(other.data.path).parent / stage.data_file
                if candidate.is_file():
                    log.info("%s data: %s (the folder of the run's other stages)", stage.name, candidate)
                    return str(candidate)
        return None

    def record_session(self, stage: str, profile, versions: dict, training: dict | None = None,
                       train: TrainConfig | None = None) -> SessionRecord:
        """Append this session to run.json's history (saved by the caller) and return its record: what
        it ran (``training``, from the session's plan), its own settings (``train``) and its starting
        step, so a session with another precision or micro-batch adds to the record of earlier steps."""
        steps = [n for n, folder in step_folders(self.layout.checkpoints(stage)) if (folder / MANIFEST).is_file()]
        step = steps[-1] if steps else 0
        before = next((s for s in reversed(self.record.sessions) if s.stage == stage and s.train), None)
        if train is not None and before is not None and step and \
                before.train.get("mixed_precision") != train.mixed_precision:
            log.warning("%s: mixed precision changes from %s to %s at step %d (each session's settings are kept "
                        "in run.json)", stage, before.train.get("mixed_precision"), train.mixed_precision, step)
        session = SessionRecord(stage=stage, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                hardware=profile.to_dict(), versions=versions, training=dict(training or {}),
                                step=step, train=train.to_dict() if train is not None else None)
        self.record.sessions.append(session)
        return session


def _saved_model(path: Path) -> Path:
    """``--init-from``'s model, checked before anything is written: a model folder (ours or an
    upstream checkpoint) or an exported zip."""
    if path.is_file() and path.suffix == ".zip":
        return path
    if path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / UPSTREAM_ADAPTERS).is_file()):
        return path
    what = "does not exist" if not path.exists() else f"is not a saved model (no {CONFIG_FILE}, no {UPSTREAM_ADAPTERS}" \
        " and not a .zip)"
    raise RunError(f"--init-from {path} {what}: give a stage's final folder, an upstream CLaRa checkpoint or an "
                   "exported zip")


def _check_same(what: str, saved: dict, explicit: dict, source: Path, notes: dict | None = None) -> None:
    notes = notes or {}
    diffs = [f"{k}: {source.name} has {saved.get(k)!r}{f' ({notes[k]})' if k in notes else ''}, "
             f"this command asks {v!r}" for k, v in explicit.items() if k in saved and saved[k] != v]
    if diffs:
        raise RunError(f"{what}s conflict with {source}:\n  " + "\n  ".join(diffs)
                       + "\nDrop those options to continue this run, or use a new --run-dir.")


def _without_session_keys(options: dict) -> dict:
    """Model options minus what each session may choose for itself (the 4-bit load)."""
    return {k: v for k, v in options.items() if k != "quantization"}


def stages_to_train(stage: str) -> list[Stage]:
    """``--stage NAME`` or ``--stage all`` as stage objects, in order."""
    return list(STAGES.values()) if stage == ALL else [get_stage(stage)]
