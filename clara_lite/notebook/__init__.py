"""The notebook suite's package side: cells call these and show the result.

- :mod:`.colab`: the stdlib-only bootstrap (Colab or not, the "Drive" folder, installs)
- :mod:`.settings`: a run's notebook settings in its run.json; :mod:`.widgets`: the settings form
- :mod:`.workspace`: :class:`Workspace`, one run and what each notebook does with it
- :mod:`.official`: an official CLaRa-7B release in 05_inference, with or without a run

Importing this package imports nothing else: ``from clara_lite.notebook import colab`` must work on
a fresh runtime before anything is installed; the names below load on first use.

For example::

    from clara_lite import notebook as nb
    ws = nb.Workspace.open(env.drive)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Workspace": "workspace",
    "Settings": "settings", "SettingsError": "settings", "NOTEBOOKS": "settings", "current_run": "settings",
    "load_settings": "settings", "run_dir": "settings", "save_settings": "settings", "saved_settings": "settings",
    "show_plan": "settings",
    "choose_settings": "widgets", "settings_form": "widgets",
    "official_model": "official", "ask_official": "official",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'clara_lite.notebook' has no attribute {name!r}")
