"""A run folder: its ``run.json`` record, one sub-folder per stage, stages chained in order.

``run.json`` is the source of truth: a resumed (or Colab-reconnected) session reads its settings
from there; options given again must agree with it, and a disagreement stops with the difference.
Where things are on disk is :class:`clara_lite.layout.RunLayout`; what run.json holds is
:class:`~clara_lite.train.record.RunRecord`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ClaraConfig, TrainConfig
from ..layout import KIND_CHECKPOINT, RunLayout, sha256_file, verify, write_json
from ..stages import ALL, ORDER, STAGES, Stage, get_stage, previous_stage
from .checkpoint import complete_checkpoints
from .record import DataRecord, RunRecord, SessionRecord

log = logging.getLogger(__name__)


class RunError(ValueError):
    """The run folder and the request disagree, or a stage is asked for out of order."""


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
        self.record = RunRecord.load(self.layout.run_file)

    @property
    def exists(self) -> bool:
        return self.layout.run_file.is_file()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.layout.run_file, self.record.to_dict())

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
            return Path(init_from)
        prev = previous_stage(stage)
        if prev is None:
            return None
        if self.is_final(prev.name):
            return self.final_dir(prev.name)
        raise RunError(f"{stage.name} starts from {prev.name}/final, which does not exist in {self.root} "
                       f"({prev.name}: {self.stage_status(prev.name)}). Run `clara-lite train --stage {prev.name} "
                       f"--run-dir {self.root}` first (or --stage all; in Colab: {prev.notebook}.ipynb), or start "
                       f"{stage.name} from another model with --init-from DIR|ZIP.")

    # ----------------------------------------------------------- settings

    def model_config(self, explicit: dict) -> ClaraConfig:
        """Model settings: from run.json when present (explicit options must agree), else new.
        ``quantization`` is a session's choice (see :mod:`.plan`): never a conflict, kept as first given."""
        saved = self.record.model
        if saved is None:
            self.record.model = ClaraConfig(**explicit)
            return replace(self.record.model, trained_stages=[])
        _check_same("model setting", saved.to_dict(), _without_session_keys(explicit), self.root)
        return replace(saved, trained_stages=[])

    def train_config(self, stage: str, explicit: dict, session: dict) -> TrainConfig:
        """The stage's training settings for this session: the result-changing ones from run.json (given
        options must agree), the hardware ones (``session``: micro-batch, accumulation, precision,
        checkpointing, planned to keep run.json's rows per step) from this session's plan."""
        entry = self.record.stage(stage)
        if entry.train is None:
            entry.train = TrainConfig(**{**explicit, **session})
            return entry.train
        self._check_train(stage, entry.train, explicit)
        entry.train = replace(entry.train, **{**explicit, **session})
        return entry.train

    def check(self, stages, model_options: dict, train_options: dict) -> None:
        """Fail early (before skipping finished stages) when options contradict run.json."""
        if self.record.model is not None:
            _check_same("model setting", self.record.model.to_dict(), _without_session_keys(model_options), self.root)
        for stage in stages:
            saved = self.record.stages.get(stage)
            if saved is not None and saved.train is not None:
                self._check_train(stage, saved.train, train_options)

    def _check_train(self, stage: str, saved: TrainConfig, explicit: dict) -> None:
        result = {k: v for k, v in saved.to_dict().items() if k in TrainConfig.RESULT_KEYS}
        result["rows_per_step"] = saved.step_rows()  # run.json files before rows_per_step: micro x accumulation
        _check_same(f"{stage} training setting", result,
                    {k: v for k, v in explicit.items() if k in TrainConfig.RESULT_KEYS}, self.root)

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
        if not path.is_file():
            raise RunError(f"{stage.name} data file {path} does not exist")
        digest = sha256_file(path)
        # hashing the checkpoints is only worth it when the data did change
        if saved is not None and saved.sha256 != digest and complete_checkpoints(self.layout.checkpoints(stage.name)):
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

    def record_session(self, stage: str, profile, versions: dict, training: dict | None = None) -> SessionRecord:
        """Append this session to run.json's history (saved by the caller) and return its record."""
        session = SessionRecord(stage=stage, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                hardware=profile.to_dict(), versions=versions, training=dict(training or {}))
        self.record.sessions.append(session)
        return session


def _check_same(what: str, saved: dict, explicit: dict, root: Path) -> None:
    diffs = [f"{k}: run.json has {saved.get(k)!r}, this command asks {v!r}"
             for k, v in explicit.items() if k in saved and saved[k] != v]
    if diffs:
        raise RunError(f"{what}s conflict with {RunLayout(root).run_file}:\n  " + "\n  ".join(diffs)
                       + "\nDrop those options to continue this run, or use a new --run-dir.")


def _without_session_keys(options: dict) -> dict:
    """Model options minus what each session may choose for itself (the 4-bit load)."""
    return {k: v for k, v in options.items() if k != "quantization"}


def stages_to_train(stage: str) -> list[Stage]:
    """``--stage NAME`` or ``--stage all`` as stage objects, in order."""
    return list(STAGES.values()) if stage == ALL else [get_stage(stage)]
