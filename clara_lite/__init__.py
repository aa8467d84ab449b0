"""clara_lite: train and serve CLaRa-style compressed-document RAG models.

Importing the package is cheap: heavy modules load on first use of a name below.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ClaraModel": "model.modeling",
    "ClaraConfig": "core.config",
    "TrainConfig": "core.config",
    "load_base_model": "model.base",
    "detect_hardware": "core.hardware",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'clara_lite' has no attribute {name!r}")
