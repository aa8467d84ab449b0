"""A notebook run's settings: what 00_setup asks in its form, kept in the run's ``run.json``.

Notebook things (run name, data folder, steps per stage) plus *overrides* of
:class:`~clara_lite.core.config.ClaraConfig` and :class:`~clara_lite.core.config.TrainConfig` fields, each
under the field's own name; ``None`` means "the field's own default" (or the hardware plan's), so a
default lives in one place. In ``run.json`` the model settings are stored once, as the run's
``model`` record; the ``settings`` section holds the rest. Every later notebook, and every new Colab
runtime, reads them from there instead of asking again. ``<drive>/current_run.txt`` names the run
set up last, so the other notebooks need no run name.

For example::

    settings = save_settings(drive, Settings(run_name="demo", base_model="qwen2.5-1.5b"))
    load_settings(drive).train_options("stage1")
    # -> {'max_steps': 40}
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..core.config import ClaraConfig, TrainConfig
from ..core.errors import ClaraError
from ..core.hardware import DeviceInfo, describe, detect_hardware
from ..core.layout import RUN_FILE, RUNS_DIR
from ..model.size import model_params_b
from ..model.stages import STAGES
from ..train.recipe import RecipeError, find_recipe
from ..train.run import Run

log = logging.getLogger(__name__)

CURRENT_RUN = "current_run.txt"
DEFAULT_RUN = "my-run"
# the Colab notebook for each step (the stage registry knows nothing of notebooks)
NOTEBOOKS = {"setup": "00_setup", "data": "01_data", "stage1": "02_stage1", "stage2": "03_stage2",
             "stage3": "04_stage3", "inference": "05_inference"}
QUANTIZATION_CHOICES = ("auto", "4bit", "8bit", "none")  # 'auto': the hardware plan decides
# what each training session plans again for its GPU: may change for an existing run (nothing trained depends on it)
HARDWARE = ("quantization", "micro_batch_size", "grad_accum_steps", "gradient_checkpointing", "attention")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_OVERRIDE = "override of the field of the same name; None = its default"
_STEPS = "optimizer steps; None = the recipe's; 0 = train `epochs` passes"
AUTO_RECIPE = "auto"
# the recipe a stage trains with when ``recipe`` is 'auto', by the hardware class it starts on
COLAB_RECIPES = {"cpu": "colab_cpu", "t4": "colab_t4", "a100": "colab_a100"}
A100_CLASS_GB = 30  # GPUs with this much memory or more train like an A100 (40/80 GB); below, like a T4 (16 GB)


class SettingsError(ClaraError, ValueError):
    """Missing or invalid notebook settings; the message says which notebook fixes it."""
    code = "bad_settings"


@dataclass
class Settings:
    """One run's notebook settings: its own few, and overrides of ClaraConfig / TrainConfig fields."""

    run_name: str = field(default="", metadata={"help": "folder under <drive>/runs; '' = the current run"})
    # ClaraConfig overrides
    base_model: str | None = field(default=None, metadata={"help": _OVERRIDE, "model": True})
    compr_rate: int | None = field(default=None, metadata={"help": _OVERRIDE, "model": True})
    doc_max_length: int | None = field(default=None, metadata={"help": _OVERRIDE, "model": True})
    generation_top_k: int | None = field(default=None, metadata={"help": _OVERRIDE, "model": True})
    lora_r: int | None = field(default=None, metadata={"help": _OVERRIDE, "model": True})
    max_decoder_length: int | None = field(default=None, metadata={"help": _OVERRIDE, "model": True})
    quantization: str = field(default="auto", metadata={"help": "'auto' (each session's hardware plan: 4-bit only "
                                                                "when the model would not fit), '4bit', '8bit', 'none'"})
    recipe: str = field(default=AUTO_RECIPE, metadata={"help": "'auto': the Colab recipe for the hardware each "
                                                              "stage starts on (colab_cpu / colab_t4 / colab_a100), "
                                                              "or a shipped recipe's name or a recipe file"})
    stage1_steps: int | None = field(default=None, metadata={"help": _STEPS})
    stage2_steps: int | None = field(default=None, metadata={"help": _STEPS})
    stage3_steps: int | None = field(default=None, metadata={"help": _STEPS})
    # TrainConfig overrides (every stage)
    epochs: float | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    save_minutes: float | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    save_steps: int | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    log_steps: int | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    micro_batch_size: int | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    grad_accum_steps: int | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    attention: str | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    lr: float | None = field(default=None, metadata={"help": _OVERRIDE, "train": True})
    data_dir: str | None = field(default=None, metadata={"help": "set by 01_data; relative to the Drive root"})
    def __post_init__(self):
        if self.run_name and not _RUN_NAME.match(self.run_name):
            raise SettingsError(f"run name {self.run_name!r}: use letters, digits, '.', '_' or '-' (max 64)")
        if self.quantization not in QUANTIZATION_CHOICES:
            raise SettingsError(f"quantization must be one of {QUANTIZATION_CHOICES}, got {self.quantization!r}")
        if min((self.steps(s) for s in STAGES if self.steps(s) is not None), default=0) < 0:
            raise SettingsError("steps must be >= 0 (0 = train `epochs` passes; None = the recipe's)")
        if self.recipe != AUTO_RECIPE:
            try:
                find_recipe(self.recipe)
            except RecipeError as err:
                raise SettingsError(f"{err}; or 'auto' (by hardware: {', '.join(COLAB_RECIPES.values())})") from None
        try:
            ClaraConfig(**self.model_options())
            TrainConfig(**self.train_overrides())
        except (TypeError, ValueError) as err:
            raise SettingsError(str(err)) from None

    def steps(self, stage: str) -> int | None:
        return getattr(self, f"{stage}_steps")

    def recipe_name(self, device: DeviceInfo, started_with: str | None = None) -> str:
        """The recipe a stage trains with: the one chosen, else the one it started with (a resumed stage keeps
        its steps on another GPU), else the Colab recipe for ``device``'s class."""
        if self.recipe != AUTO_RECIPE:
            return self.recipe
        return started_with or colab_recipe(device)

    def model_options(self) -> dict:
        """The :class:`~clara_lite.core.config.ClaraConfig` fields this run sets (``run.train``'s ``model_options``)."""
        opts = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("model")}
        opts = {k: v for k, v in opts.items() if v is not None}
        if self.quantization != "auto":
            opts["quantization"] = self.quantization
        return opts

    def train_overrides(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("train")}
        return {k: v for k, v in values.items() if v is not None}

    def train_options(self, stage: str) -> dict:
        """The :class:`~clara_lite.core.config.TrainConfig` fields for ``stage``; unset ones come from the plan."""
        opts = self.train_overrides()
        if self.steps(stage) is not None:  # 0: no step count, `epochs` passes (over the recipe's max_steps)
            opts["max_steps"] = self.steps(stage) or None
        return opts

    def to_dict(self) -> dict:
        return asdict(self)

    def stored(self) -> dict:
        """What run.json's ``settings`` section keeps: everything but the model settings, which live
        once in the run's ``model`` record."""
        return {k: v for k, v in self.to_dict().items()
                if k != "quantization" and not _field(k).metadata.get("model")}

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        known = {f.name for f in fields(cls)}
        data = {("generation_top_k" if k == "top_k" else k): v for k, v in data.items()}  # before 0.2
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def format(self) -> str:
        """One line per setting, unset ones with the value they stand for (from the field's one home)."""
        model, lines = ClaraConfig(**self.model_options()), []
        for k, v in self.to_dict().items():
            f = _field(k)
            if v is not None:
                shown = v
            elif f.metadata.get("model"):
                shown = f"{getattr(model, k)} (default)"
            elif k in TrainConfig.HARDWARE_KEYS:
                shown = "(the hardware plan)"
            elif f.metadata.get("train"):
                default = next(t.default for t in fields(TrainConfig) if t.name == k)
                shown = "(each stage's own)" if default is None else f"{default} (default)"
            else:
                shown = "(not set)"
            lines.append(f"{k:<22} {shown}")
        return "\n".join(lines)


def colab_recipe(device: DeviceInfo) -> str:
    """The shipped recipe for ``device``'s class: a CPU (or MPS), a T4-class GPU, an A100-class GPU.

    >>> colab_recipe(DeviceInfo("cuda", "Tesla T4", (7, 5), 15.8, 15.1, count=1))
    'colab_t4'
    >>> colab_recipe(DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 42.5, 42.0, count=1))
    'colab_a100'
    """
    if device.kind != "cuda":
        return COLAB_RECIPES["cpu"]
    return COLAB_RECIPES["a100" if (device.total_mem_gb or 0) >= A100_CLASS_GB else "t4"]


def _field(name: str):
    return next(f for f in fields(Settings) if f.name == name)


# ----------------------------------------------------------------------- settings on Drive


def run_dir(drive: Path, name: str) -> Path:
    return Path(drive) / RUNS_DIR / name


def current_run(drive: Path) -> str | None:
    """The run set up last in this Drive folder, or None."""
    path = Path(drive) / CURRENT_RUN
    return (path.read_text().strip() or None) if path.is_file() else None


def saved_settings(drive: Path, name: str) -> Settings | None:
    record = Run(run_dir(drive, name)).record
    if not record.settings:
        return None
    data = dict(record.settings)
    if record.model is not None:  # the model settings, from their one home
        model = record.model
        data.update({f.name: getattr(model, f.name) for f in fields(Settings) if f.metadata.get("model")})
        data["quantization"] = model.quantization or "auto"
    return Settings.from_dict(data)


def save_settings(drive: Path, settings: Settings) -> Settings:
    """Check ``settings`` and write them to run.json (``auto`` quantization stays: each training session
    plans it for the GPU it gets).

    An existing run keeps its settings: only ``data_dir`` (the runner still refuses data that changed
    under a started stage) and the :data:`HARDWARE` ones may change (each session plans them again: the
    next session loads and splits its steps that way, the rows per step stay).
    """
    if not settings.run_name:
        raise SettingsError("settings need a run name")
    old = saved_settings(drive, settings.run_name)
    if old is not None:
        resolved = _resolved(settings)
        changed = [k for k, v in resolved.to_dict().items() if k not in ("data_dir", *HARDWARE) and getattr(old, k) != v]
        if changed:
            raise SettingsError(f"run {settings.run_name!r} already has other settings ({', '.join(changed)}): "
                                "choose a new run name for new settings (only "
                                f"{', '.join(HARDWARE)} and the data folder may change for a run)")
    run = Run(run_dir(drive, settings.run_name))
    if run.record.model is None:
        run.record.model = ClaraConfig(**settings.model_options())
    else:  # the 4-bit choice lives with the model settings; it is the next session's
        run.record.model = replace(run.record.model, quantization=settings.model_options().get("quantization"))
    run.record.settings = settings.stored()
    run.save()
    (Path(drive) / CURRENT_RUN).write_text(settings.run_name + "\n")
    return saved_settings(drive, settings.run_name)


def _resolved(settings: Settings) -> Settings:
    """``settings`` with every model field filled in (as a saved run reports them)."""
    config = ClaraConfig(**settings.model_options())
    values = {f.name: getattr(config, f.name) for f in fields(Settings) if f.metadata.get("model")}
    return replace(settings, **values, quantization=config.quantization or "auto")


def load_settings(drive: Path, run_name: str = "") -> Settings:
    """The saved settings of ``run_name`` (default: the current run), printed."""
    name = run_name or current_run(drive)
    if not name:
        raise SettingsError(f"No run set up in {drive}: run {NOTEBOOKS['setup']}.ipynb first")
    settings = saved_settings(drive, name)
    if settings is None:
        raise SettingsError(f"{run_dir(drive, name)} has no settings: run {NOTEBOOKS['setup']}.ipynb with "
                            f"RUN_NAME = {name!r}")
    (Path(drive) / CURRENT_RUN).write_text(name + "\n")
    print(f"Run {name!r}: settings from {run_dir(drive, name) / RUN_FILE}\n{settings.format()}")
    return settings


def _profile(settings: Settings):
    return detect_hardware(model_params_b=model_params_b(settings.base_model or ClaraConfig().base_model))


def show_plan(settings: Settings | None) -> None:
    """The hardware profile and, in one line, what training will do with this model here."""
    if settings is None:
        print("Settings not saved yet: click 'Save settings' above; the plan appears under the form.")
        return
    profile = _profile(settings)
    print(describe(profile))
    quant = settings.quantization if settings.quantization != "auto" else (
        "4bit" if profile.load_in_4bit else "none")
    micro = settings.micro_batch_size or profile.micro_batch_size
    accum = settings.grad_accum_steps or profile.grad_accum_steps
    memory = "unknown" if profile.est_train_mem_gb is None else f"~{profile.est_train_mem_gb:.1f} GB"
    base = settings.base_model or ClaraConfig().base_model
    print(f"\nplan          {base}: 4-bit {quant}; batch {micro} x {accum} = {micro * accum} rows "
          f"per step; expected memory {memory}; {profile.mixed_precision} precision, {profile.attn_implementation}")
