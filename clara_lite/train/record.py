"""``run.json`` as typed records: what a run was asked to do, on what data, on which machines.

One copy of every setting: ``model`` is the :class:`~clara_lite.core.config.ClaraConfig` the run trains
(fixed at the first stage), each stage's ``train`` the :class:`~clara_lite.core.config.TrainConfig` it
started with, ``settings`` only what a notebook adds (run name, data folder, steps per stage).
Reading it needs no training code (export reads it for the model card).

    {"format": 1,
     "model": {ClaraConfig without trained_stages},
     "stages": {"stage1": {"data": {"path", "sha256", "rows"}, "train": {TrainConfig},
                           "init_from": "...", "final": {summary}}, ...},
     "sessions": [{"stage", "started", "hardware": {HardwareProfile}, "versions": {...},
                   "training": {what the session ran: quantization, dtype, attention, micro-batch x accumulation,
                                rows per step, warnings; see train.plan.SessionPlan.record}}, ...],
                   "step": where the session started, "train": {its TrainConfig}}, ...],
     "takeovers": [{"at", "by", "from": {the lock it replaced}, "reason"}, ...],
     "settings": {notebook settings} | null}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.config import ClaraConfig, TrainConfig, check_keys
from ..core.errors import ClaraError

RUN_FORMAT = 1


class RunRecordError(ClaraError, ValueError):
    """A run.json that cannot be read; the message names the file."""
    code = "bad_run_record"


def _known(cls, data: dict, where: str) -> dict:
    try:
        return check_keys(cls, data, where)
    except ValueError as err:
        raise RunRecordError(str(err)) from None


@dataclass
class DataRecord:
    """The data file a stage trains on; its hash guards a resumed stage against changed data."""

    path: str
    sha256: str
    rows: int | None = None


@dataclass
class StageRecord:
    data: DataRecord | None = None
    train: TrainConfig | None = None  # as the stage started (result-changing keys are then fixed)
    init_from: str | None = None  # a model the stage started from instead of the previous stage's final
    final: dict | None = None  # the summary written with the stage's final model
    recipe: dict | None = None  # the recipe file the stage's settings came from: {"path", "sha256"}

    def to_dict(self) -> dict:
        return {"data": asdict(self.data) if self.data else None,
                "train": self.train.to_dict() if self.train else None,
                "init_from": self.init_from, "final": self.final, "recipe": self.recipe}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> StageRecord:
        data = _known(cls, data, where)
        return cls(data=DataRecord(**data["data"]) if data.get("data") else None,
                   train=TrainConfig.from_dict(data["train"], f"{where}.train") if data.get("train") else None,
                   init_from=data.get("init_from"), final=data.get("final"), recipe=data.get("recipe"))


@dataclass
class SessionRecord:
    """One process that trained a stage: when, on which hardware plan, with which libraries, what it ran
    (each session re-plans the hardware choices; older run.json files have no ``training``), from which
    step and with which settings (each session keeps its own, so the record of earlier steps is never
    overwritten)."""

    stage: str
    started: str
    hardware: dict
    versions: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    step: int | None = None  # the step the session started from (0: the stage's start)
    train: dict | None = None  # the TrainConfig this session trained with


@dataclass
class RunRecord:
    format: int = RUN_FORMAT
    model: ClaraConfig | None = None  # trained_stages is not kept here: it is a model's, not a run's
    stages: dict[str, StageRecord] = field(default_factory=dict)
    sessions: list[SessionRecord] = field(default_factory=list)
    settings: dict | None = None  # a notebook's own settings (clara_lite.notebook.settings.Settings)
    takeovers: list[dict] = field(default_factory=list)  # run-folder locks taken over (train.lock.RunLock.taken_over)

    def stage(self, name: str) -> StageRecord:
        """The record of stage ``name``, created empty when the stage has none yet."""
        return self.stages.setdefault(name, StageRecord())

    def to_dict(self) -> dict:
        model = None
        if self.model is not None:
            model = {k: v for k, v in self.model.to_dict().items() if k != "trained_stages"}
        return {"format": self.format, "model": model,
                "stages": {name: rec.to_dict() for name, rec in self.stages.items()},
                "sessions": [asdict(s) for s in self.sessions], "settings": self.settings,
                **({"takeovers": self.takeovers} if self.takeovers else {})}

    @classmethod
    def from_dict(cls, data: dict, where: str = "run.json") -> RunRecord:
        data = _known(cls, data, where)
        if not isinstance(data.get("format", RUN_FORMAT), int):
            raise RunRecordError(f"{where}: 'format' must be an integer, got {data['format']!r}")
        if data.get("format", RUN_FORMAT) > RUN_FORMAT:
            raise RunRecordError(f"{where} was written by a newer clara_lite (format {data['format']}): upgrade")
        try:
            model = ClaraConfig.from_dict({**data["model"], "trained_stages": []}, f"{where}: model") \
                if data.get("model") else None
            stages = {name: StageRecord.from_dict(rec, f"{where}: stages.{name}")
                      for name, rec in (data.get("stages") or {}).items()}
            sessions = [SessionRecord(**s) for s in data.get("sessions") or []]
        except (TypeError, ValueError) as err:
            text = str(err)
            raise RunRecordError(text if text.startswith(where) else f"{where}: {text}") from None
        return cls(format=data.get("format", RUN_FORMAT), model=model, stages=stages, sessions=sessions,
                   settings=data.get("settings"), takeovers=list(data.get("takeovers") or []))

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """The record in ``path``, or an empty one when there is no file yet."""
        path = Path(path)
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # torn, empty, not UTF-8, absurd numbers or nesting
            raise RunRecordError(f"{path} is not valid JSON ({err})") from None
        return cls.from_dict(data, str(path))
