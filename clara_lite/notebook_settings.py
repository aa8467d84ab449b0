"""A notebook run's settings: what 00_setup asks in its form, kept in the run's ``run.json``.

They live in the ``settings`` section of ``<drive>/runs/<run>/run.json``; every later notebook, and
every new Colab runtime, reads them from there instead of asking again (options given again must
agree with run.json anyway, see :mod:`clara_lite.run`). ``<drive>/current_run.txt`` names the run
set up last, so the other notebooks need no run name. They become ``run.train``'s
``model_options`` and ``train_options``.

>>> settings = save_settings(drive, Settings(run_name="demo", base_model="qwen2.5-1.5b"))  # doctest: +SKIP
>>> load_settings(drive).train_options("stage1")                                         # doctest: +SKIP
{'save_minutes': 20.0, 'log_steps': 5, 'max_steps': 40}
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
CURRENT_RUN = "current_run.txt"
SETTINGS_KEY = "settings"
DEFAULT_RUN = "my-run"
STAGES = ("stage1", "stage2", "stage3")
NOTEBOOKS = {"setup": "00_setup", "data": "01_data", "stage1": "02_stage1", "stage2": "03_stage2",
             "stage3": "04_stage3", "inference": "05_inference"}
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SettingsError(ValueError):
    """Missing or invalid notebook settings; the message says which notebook fixes it."""


@dataclass
class Settings:
    """One run's settings: the model options and per-stage training options of ``run.train``."""

    run_name: str = field(default="", metadata={"help": "folder under <drive>/runs; '' = the current run"})
    base_model: str = field(default="smollm2-135m", metadata={"help": "registry name, Hub id or folder"})
    compr_rate: int = field(default=8, metadata={"help": "document tokens per memory vector"})
    doc_max_length: int = field(default=64, metadata={"help": "document tokens kept per passage"})
    top_k: int = field(default=2, metadata={"help": "documents retrieved per question"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of every adapter"})
    quantization: str = field(default="auto", metadata={"help": "'auto' (the hardware plan), '4bit', '8bit', 'none'"})
    stage1_steps: int = field(default=40, metadata={"help": "optimizer steps; 0 = train `epochs` passes"})
    stage2_steps: int = field(default=40, metadata={"help": "optimizer steps; 0 = train `epochs` passes"})
    stage3_steps: int = field(default=30, metadata={"help": "optimizer steps; 0 = train `epochs` passes"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data for stages with 0 steps"})
    save_minutes: float = field(default=20.0, metadata={"help": "checkpoint to Drive every M minutes"})
    save_steps: int | None = field(default=None, metadata={"help": "also checkpoint every N steps"})
    log_steps: int = field(default=5, metadata={"help": "metrics line every N steps"})
    micro_batch_size: int | None = field(default=None, metadata={"help": "None: from the hardware plan"})
    grad_accum_steps: int | None = field(default=None, metadata={"help": "None: from the hardware plan"})
    lr: float | None = field(default=None, metadata={"help": "None: 1e-4 stage1/2, 5e-6 stage3"})
    data_dir: str | None = field(default=None, metadata={"help": "set by 01_data; relative to the Drive root"})

    def __post_init__(self):
        if self.run_name and not _RUN_NAME.match(self.run_name):
            raise SettingsError(f"run name {self.run_name!r}: use letters, digits, '.', '_' or '-' (max 64)")
        if self.quantization not in ("auto", "4bit", "8bit", "none"):
            raise SettingsError(f"quantization must be 'auto', '4bit', '8bit' or 'none', got {self.quantization!r}")
        if min(self.stage1_steps, self.stage2_steps, self.stage3_steps) < 0:
            raise SettingsError("steps must be >= 0 (0 = train `epochs` passes)")
        if self.epochs <= 0 or self.save_minutes <= 0 or self.log_steps < 1:
            raise SettingsError("epochs and save_minutes must be > 0, log_steps >= 1")

    def steps(self, stage: str) -> int:
        return getattr(self, f"{stage}_steps")

    def model_options(self) -> dict:
        """Keyword arguments of :class:`clara_lite.ClaraConfig` (``run.train``'s ``model_options``)."""
        quantization = None if self.quantization in ("none", "auto") else self.quantization
        return {"base_model": self.base_model, "compr_rate": self.compr_rate, "doc_max_length": self.doc_max_length,
                "generation_top_k": self.top_k, "lora_r": self.lora_r, "quantization": quantization}

    def train_options(self, stage: str) -> dict:
        """Fields of :class:`clara_lite.training.TrainConfig` for ``stage``; unset ones come from the plan."""
        opts = {"save_minutes": self.save_minutes, "log_steps": self.log_steps}
        opts.update({"max_steps": self.steps(stage)} if self.steps(stage) else {"epochs": self.epochs})
        optional = {"save_steps": self.save_steps, "micro_batch_size": self.micro_batch_size,
                    "grad_accum_steps": self.grad_accum_steps, "lr": self.lr}
        return opts | {k: v for k, v in optional.items() if v is not None}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def format(self) -> str:
        return "\n".join(f"{k:<17} {v}" for k, v in self.to_dict().items())


# ----------------------------------------------------------------------- settings on Drive


def run_dir(drive: Path, name: str) -> Path:
    return Path(drive) / RUNS_DIR / name


def current_run(drive: Path) -> str | None:
    """The run set up last in this Drive folder, or None."""
    path = Path(drive) / CURRENT_RUN
    return (path.read_text().strip() or None) if path.is_file() else None


def saved_settings(drive: Path, name: str) -> Settings | None:
    from .run import Run

    data = Run(run_dir(drive, name)).data.get(SETTINGS_KEY)
    return Settings.from_dict(data) if data else None


def save_settings(drive: Path, settings: Settings) -> Settings:
    """Check ``settings`` (``auto`` quantization becomes the plan's choice) and write them to run.json.

    An existing run keeps its settings: only ``data_dir`` may change (run.py still refuses data that
    changed under a started stage).
    """
    from .config import ClaraConfig
    from .run import Run

    if not settings.run_name:
        raise SettingsError("settings need a run name")
    if settings.quantization == "auto":
        settings = replace(settings, quantization="4bit" if _profile(settings).load_in_4bit else "none")
    old = saved_settings(drive, settings.run_name)
    if old is not None:
        changed = [k for k, v in settings.to_dict().items() if k != "data_dir" and getattr(old, k) != v]
        if changed:
            raise SettingsError(f"run {settings.run_name!r} already has other settings ({', '.join(changed)}): "
                                "choose a new run name for new settings")
    try:
        ClaraConfig(**settings.model_options())
    except ValueError as err:
        raise SettingsError(str(err)) from None
    run = Run(run_dir(drive, settings.run_name))
    run.data[SETTINGS_KEY] = settings.to_dict()
    run.save()
    (Path(drive) / CURRENT_RUN).write_text(settings.run_name + "\n")
    return settings


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
    print(f"Run {name!r}: settings from {run_dir(drive, name) / 'run.json'}\n{settings.format()}")
    return settings


def choose_settings(drive: Path, settings: Settings, *, interactive: bool = True) -> Settings | None:
    """00_setup: show the saved settings of an existing run, else ask with a form (or save as given).

    ``settings.run_name`` empty means the current run. Returns the saved settings, or None while
    the form waits for its Save button.
    """
    name = settings.run_name or current_run(drive)
    if name and saved_settings(drive, name) is not None:
        saved = load_settings(drive, name)
        differ = [f.name for f in fields(Settings) if f.name not in ("run_name", "data_dir", "quantization")
                  and getattr(saved, f.name) != getattr(settings, f.name)]
        if differ and not interactive:  # with a form, the parameters are only its starting values
            print(f"\nNot applied (run.json wins for an existing run): {', '.join(differ)}. "
                  "For other settings, choose a new run name.")
        return saved
    settings = replace(settings, run_name=name or DEFAULT_RUN)
    if interactive:
        from IPython.display import display

        display(settings_form(drive, settings))
        return None
    saved = save_settings(drive, settings)
    print(f"Saved settings of the new run {saved.run_name!r} to {run_dir(drive, saved.run_name) / 'run.json'}\n"
          f"{saved.format()}")
    return saved


def settings_form(drive: Path, settings: Settings):
    """An ipywidgets form for the main settings, with a Save button (writes run.json, shows the plan)."""
    import ipywidgets as w

    from .models import REGISTRY

    style = {"description_width": "150px"}
    inputs = {
        "run_name": w.Text(settings.run_name, description="run name"),
        "base_model": w.Combobox(value=settings.base_model, options=list(REGISTRY), ensure_option=False,
                                 description="base model", placeholder="registry name or Hub id"),
        "compr_rate": w.BoundedIntText(settings.compr_rate, min=1, max=256, description="compression rate"),
        "doc_max_length": w.BoundedIntText(settings.doc_max_length, min=1, max=8192, description="document length"),
        "top_k": w.BoundedIntText(settings.top_k, min=1, max=64, description="top-k"),
        **{f"{s}_steps": w.BoundedIntText(settings.steps(s), min=0, max=10**7, description=f"{s} steps (0=epochs)")
           for s in STAGES},
        "epochs": w.BoundedFloatText(settings.epochs, min=0.01, max=1000, description="epochs"),
        "save_minutes": w.BoundedFloatText(settings.save_minutes, min=0.5, max=600, description="save every (min)"),
    }
    for widget in inputs.values():
        widget.style = style
    button = w.Button(description="Save settings", button_style="primary", icon="check")
    out = w.Output()

    def save(_):
        out.clear_output()
        with out:
            try:
                values = {k: v.value.strip() if isinstance(v.value, str) else v.value for k, v in inputs.items()}
                saved = save_settings(drive, replace(settings, **values))
            except (SettingsError, ValueError) as err:
                print(f"Not saved: {err}")
                return
            print(f"Saved to {run_dir(drive, saved.run_name) / 'run.json'}; the other notebooks read them from there.")
            show_plan(saved)

    button.on_click(save)
    return w.VBox([w.HTML("<b>Run settings</b> (saved into the run's run.json)"), *inputs.values(), button, out])


def _profile(settings: Settings):
    from .hardware import detect_hardware
    from .models import resolve

    params = resolve(settings.base_model).params_b
    return detect_hardware(model_params_b=params or None)


def show_plan(settings: Settings | None) -> None:
    """The hardware profile and, in one line, what training will do with this model here."""
    from .hardware import describe

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
    print(f"\nplan          {settings.base_model}: 4-bit {quant}; batch {micro} x {accum} = {micro * accum} rows "
          f"per step; expected memory {memory}; {profile.mixed_precision} precision, {profile.attn_implementation}")
