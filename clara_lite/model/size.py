"""How big a base model is, before any weight is loaded: the parameter count from ``config.json``.

Why: the hardware plan (4-bit or not, micro-batch) needs the size of *any* model, not only the
registered ones; an unregistered Hub id used to count as 0 parameters, so Qwen2.5-7B on a T4 was
planned without 4-bit. The count is exact: the model is built on PyTorch's ``meta`` device from its
config (shapes only, no memory, no download of weights). A Hub id's ``config.json`` comes from the
Hugging Face cache when it is there (offline-capable), else from the Hub.

>>> model_params_b("smollm2-135m")
0.135
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from ..core.layout import CONFIG_FILE, UPSTREAM_ADAPTERS, UPSTREAM_CONFIG
from .base import REGISTRY
from .hub import hub_token, split_hub_path

log = logging.getLogger(__name__)

# the architecture of registered models, for what depends on it (fp16 notes) without a download
_REGISTERED_FAMILY = {"smollm2-135m": "llama", "tiny-random": "llama", "qwen2.5-0.5b": "qwen2",
                      "qwen2.5-1.5b": "qwen2", "qwen2.5-3b": "qwen2", "qwen3-4b": "qwen3", "mistral-7b": "mistral",
                      "llama-3.2-1b": "llama", "llama-3.2-3b": "llama", "phi-2": "phi"}


def params_from_config(config: dict) -> float:
    """Parameters, in billions, of the causal LM ``config`` (a ``config.json`` as a dict) describes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = {k: v for k, v in config.items() if k != "quantization_config"}  # a GPTQ/AWQ config needs its kernels
    cfg = AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters()) / 1e9  # tied embeddings are one parameter


def model_family(name: str, subfolder: str | None = None) -> str | None:
    """The ``model_type`` of a base model's config (``'qwen2'``, ``'llama'``, ...), None if unknown."""
    config = _base_config(name, subfolder)
    return config.get("model_type") if config else None


@functools.lru_cache(maxsize=32)
def model_params_b(name: str, subfolder: str | None = None) -> float | None:
    """Billions of parameters of a registry name, a local folder or a Hub id (a CLaRa model counts its base
    model); None when it cannot be told (an unreachable Hub, an architecture this transformers does not
    know): the plan then says so."""
    known = _registered(name) if not subfolder else None
    if known is not None:  # a registry name or a registered Hub id: no download
        return known
    config = _base_config(name, subfolder)
    if config is None:
        return None
    if "_registered_params_b" in config:
        return config["_registered_params_b"]
    try:
        return round(params_from_config(config), 4)
    except Exception as err:  # unknown architecture (trust_remote_code models), a broken config
        log.warning("Cannot count the parameters of %s from its config (%s): the memory plan is a guess", name, err)
        return None


def _registered(name: str) -> float | None:
    if name in REGISTRY:
        return REGISTRY[name].params_b
    return next((s.params_b for s in REGISTRY.values() if s.source == name), None)


def _base_config(name: str, subfolder: str | None) -> dict | None:
    """The transformers config.json of ``name``; for a CLaRa model folder, its base model's (a registered
    base answers from the registry, so a 7B release is sized without its gated base's files)."""
    known = _registered(name) if not subfolder else None
    if known is not None:
        spec = REGISTRY.get(name) or next(s for s in REGISTRY.values() if s.source == name)
        return {"_registered_params_b": known, "model_type": _REGISTERED_FAMILY.get(spec.name)}
    hub = split_hub_path(name, subfolder)
    if hub is not None:
        return _hub_config(*hub)
    folder = Path(name) / (subfolder or "")
    if (folder / CONFIG_FILE).is_file():  # a clara_lite model: the size is its base model's
        return _base_config(json.loads((folder / CONFIG_FILE).read_text())["base_model"], None)
    path = folder / UPSTREAM_CONFIG
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if (folder / UPSTREAM_ADAPTERS).is_file() or data.get("decoder_model_name"):  # upstream CLaRa: its base's
        base = data.get("decoder_model_name")
        beside = folder.parent / str(base)
        return _base_config(str(beside) if beside.is_dir() else str(base), None) if base else None
    return data if "model_type" in data else None


def _hub_config(repo_id: str, subfolder: str | None) -> dict | None:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, UPSTREAM_CONFIG, subfolder=subfolder, token=hub_token())
    except Exception as err:  # offline and not cached, gated without a token, not on the Hub
        log.warning("Cannot read config.json of %s (%s): model size unknown", repo_id, type(err).__name__)
        return None
    data = json.loads(Path(path).read_text())
    base = data.get("decoder_model_name")
    if base:  # an upstream CLaRa checkpoint on the Hub: the size is its base model's
        beside = Path(path).parent.parent / str(base)
        return _base_config(str(beside) if beside.is_dir() else str(base), None)
    return data
