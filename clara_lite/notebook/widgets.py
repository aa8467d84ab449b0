"""The settings form of 00_setup (ipywidgets 7.7.1, Colab's, and 8), and the choice between it and a saved run."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from ..core.config import ClaraConfig, TrainConfig, bounds
from ..core.hardware import probe_device
from ..core.layout import RUN_FILE
from ..model.base import REGISTRY
from ..model.stages import STAGES
from ..train.recipe import load_recipe
from .settings import (
    DEFAULT_RUN,
    HARDWARE,
    Settings,
    SettingsError,
    current_run,
    load_settings,
    run_dir,
    save_settings,
    saved_settings,
    show_plan,
)


def choose_settings(drive: Path, settings: Settings, *, interactive: bool = True) -> Settings | None:
    """00_setup: show the saved settings of an existing run, else ask with a form (or save as given).

    ``settings.run_name`` empty means the current run. Returns the saved settings, or None while
    the form waits for its Save button.
    """
    name = settings.run_name or current_run(drive)
    if name and saved_settings(drive, name) is not None:
        saved = load_settings(drive, name)
        hardware = {k: getattr(settings, k) for k in HARDWARE if getattr(settings, k) not in (None, "auto")
                    and getattr(saved, k) != getattr(settings, k)}  # None / "auto" in the cell: not asked
        differ = [f.name for f in fields(Settings) if f.name not in ("run_name", "data_dir", *HARDWARE)
                  and getattr(settings, f.name) is not None and getattr(saved, f.name) != getattr(settings, f.name)]
        if differ and not interactive:  # with a form, the parameters are only its starting values
            print(f"\nNot applied (run.json wins for an existing run): {', '.join(differ)}. "
                  "For other settings, choose a new run name.")
        if hardware:
            saved = _save_hardware(drive, saved, hardware)
        if interactive:
            from IPython.display import display

            display(hardware_form(drive, saved))
        return saved
    settings = replace(settings, run_name=name or DEFAULT_RUN)
    if interactive:
        from IPython.display import display

        display(settings_form(drive, settings))
        return None
    saved = save_settings(drive, settings)
    print(f"Saved settings of the new run {saved.run_name!r} to {run_dir(drive, saved.run_name) / RUN_FILE}\n"
          f"{saved.format()}")
    return saved


# the config fields the form asks for (besides run name, base model and steps), with their labels
FORM_FIELDS = {"compr_rate": "compression rate", "doc_max_length": "document length", "generation_top_k": "top-k",
               "max_decoder_length": "max length (prompt+answer)", "epochs": "epochs", "save_minutes": "save every (min)"}
WIDGET_MAX = 10**9  # ipywidgets' bounded boxes need a maximum; a field without one gets this


def config_field(name: str):
    """The ClaraConfig or TrainConfig field ``name`` (the one home of its default, bounds and help)."""
    return next(f for cls in (ClaraConfig, TrainConfig) for f in fields(cls) if f.name == name)


def field_default(name: str):
    return config_field(name).default


def field_widget(name: str, value, description: str):
    """A bounded number box for config field ``name``: its bounds and default from the field, its value
    the override when set. Open bounds are met by the config's own check when the form is saved."""
    import ipywidgets as w

    f = config_field(name)
    limits = bounds(f)
    integer = "int" in str(f.type)
    low = limits.get("low", 0)
    low = low + 1 if integer and limits.get("low_open") else low
    box = w.BoundedIntText if integer else w.BoundedFloatText
    widget = box(value=f.default if value is None else value, min=low, max=limits.get("high", WIDGET_MAX),
                 description=description)
    widget.config_field = name
    return widget


def settings_form(drive: Path, settings: Settings):
    """An ipywidgets form for the main settings, with a Save button (writes run.json, shows the plan).

    Unset overrides start at their field's own default (ClaraConfig / TrainConfig); unset steps at the
    recipe's for this runtime's hardware, and stay unset (the recipe's, wherever each stage runs) unless changed."""
    import ipywidgets as w

    style = {"description_width": "150px"}
    recipe = load_recipe(settings.recipe_name(probe_device()))
    recipe_steps = {s: recipe.train_options(s).get("max_steps") or 0 for s in STAGES}
    inputs = {
        "run_name": w.Text(value=settings.run_name, description="run name"),
        "base_model": w.Combobox(value=settings.base_model or field_default("base_model"), options=list(REGISTRY),
                                 ensure_option=False, description="base model", placeholder="registry name or Hub id"),
        **{name: field_widget(name, getattr(settings, name), label) for name, label in FORM_FIELDS.items()},
        **{f"{s}_steps": w.BoundedIntText(value=recipe_steps[s] if settings.steps(s) is None else settings.steps(s),
                                          min=0, max=WIDGET_MAX, description=f"{s} steps (0=epochs)")
           for s in STAGES},
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
                for s in STAGES:  # left at the recipe's: the recipe decides, on whatever hardware the stage runs
                    if settings.steps(s) is None and values[f"{s}_steps"] == recipe_steps[s]:
                        values[f"{s}_steps"] = None
                saved = save_settings(drive, replace(settings, **values))
            except (SettingsError, ValueError) as err:
                print(f"Not saved: {err}")
                return
            print(f"Saved to {run_dir(drive, saved.run_name) / RUN_FILE}; the other notebooks read them from there.")
            show_plan(saved)

    button.on_click(save)
    return w.VBox([w.HTML("<b>Run settings</b> (saved into the run's run.json)"), *inputs.values(), button, out])


def _save_hardware(drive: Path, saved: Settings, changes: dict) -> Settings:
    new = save_settings(drive, replace(saved, **changes))
    print("\nChanged for this run (each session plans them again; the next one uses these): " + ", ".join(
        f"{k} {getattr(saved, k)!r} -> {getattr(new, k)!r}" for k in changes))
    return new


def _counts(current: int | None) -> list:
    """Dropdown options: the plan's choice, powers of two and the run's own value."""
    numbers = sorted({1, 2, 4, 8, 16, 32, *([current] if current else [])})
    return [("plan", None), *[(str(n), n) for n in numbers]]


def hardware_form(drive: Path, saved: Settings):
    """An existing run's hardware settings (4-bit, micro-batch, accumulation, gradient checkpointing,
    attention), changeable: each training session plans them again, so the next one uses what is saved."""
    import ipywidgets as w

    from ..core.config import ATTENTIONS
    from .settings import QUANTIZATION_CHOICES

    style = {"description_width": "150px"}
    inputs = {
        "quantization": w.Dropdown(options=list(QUANTIZATION_CHOICES), value=saved.quantization,
                                   description="4-bit / 8-bit"),
        "micro_batch_size": w.Dropdown(options=_counts(saved.micro_batch_size), value=saved.micro_batch_size,
                                       description="micro-batch"),
        "grad_accum_steps": w.Dropdown(options=_counts(saved.grad_accum_steps), value=saved.grad_accum_steps,
                                       description="accumulation"),
        "gradient_checkpointing": w.Dropdown(options=[("plan", None), ("on", True), ("off", False)],
                                             value=saved.gradient_checkpointing, description="grad. checkpointing"),
        "attention": w.Dropdown(options=[("plan", None), *[(a, a) for a in ATTENTIONS]], value=saved.attention,
                                description="attention"),
    }
    for widget in inputs.values():
        widget.style = style
    button = w.Button(description="Save hardware settings", icon="check")
    out = w.Output()

    def save(_):
        out.clear_output()
        with out:
            current = saved_settings(drive, saved.run_name)
            changes = {k: v.value for k, v in inputs.items() if getattr(current, k) != v.value}
            if not changes:
                print("Nothing changed.")
                return
            try:
                show_plan(_save_hardware(drive, current, changes))
            except (SettingsError, ValueError) as err:
                print(f"Not saved: {err}")

    button.on_click(save)
    return w.VBox([w.HTML("<b>Hardware settings</b> of this run (may change: each session plans them again)"),
                   *inputs.values(), button, out])
