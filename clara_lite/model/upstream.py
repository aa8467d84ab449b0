"""Loading checkpoints written by the upstream CLaRa code (apple/ml-clara).

An upstream checkpoint is ``config.json`` (CLaRaConfig), ``adapters.pth``
(``{adapter_name: {peft key without adapter name: tensor}}``) and
``decoder_first_last_layers.pth`` (the resized embedding / LM head). The .pth files are pickles,
so they are read only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import torch

from ..core.config import ClaraConfig
from ..core.layout import UPSTREAM_ADAPTERS, UPSTREAM_CONFIG, UPSTREAM_LAYERS
from . import inputs
from .adapters import greedy_generation, lora_config
from .base import load_base_model
from .stages import ORDER, QUERY_REASONER

log = logging.getLogger(__name__)

ADAPTER_NAMES = {"encoder_adapter": "encoder", "decoder_adapter": "decoder", "query_reasoner_adapter": QUERY_REASONER}
# upstream training_stage -> our stages completed by a checkpoint of that stage
STAGES = {"stage1": list(ORDER[:1]), "stage1_2": list(ORDER[:2]), "stage2": list(ORDER[:3])}


def config_from_upstream(data: dict, overrides: dict) -> ClaraConfig:
    """Translate an upstream CLaRaConfig dict (plus from_pretrained overrides) to ours."""
    data = {**data, **overrides}
    stage = data.get("training_stage", next(iter(STAGES)))
    if stage not in STAGES:
        raise ValueError(f"Unknown upstream training_stage {stage!r}; known: {sorted(STAGES)}")
    return ClaraConfig(
        base_model=data["decoder_model_name"],
        doc_max_length=int(data.get("doc_max_length", 128)),
        compr_rate=int(data.get("compr_rate", 64)),
        generation_top_k=int(data.get("generation_top_k", 1)),
        different_mem_tokens=bool(data.get("different_mem_tokens", False)),
        sep=bool(data.get("sep", False)),
        encoder_layout="upstream",
        lora_r=int(data.get("lora_r", 16)),
        lora_dropout=0.1,
        # upstream's "no" is its default, not a choice: unset, so the hardware plan decides (4-bit on a T4 for 7B)
        quantization=None if data.get("quantization", "no") in ("no", None) else data["quantization"],
        trained_stages=list(STAGES[stage]),
    )


def _resolve_base(name: str, ckpt: Path) -> str:
    """A relative base name that is a folder beside the checkpoint is taken from there."""
    beside = ckpt.parent / name
    if not Path(name).is_absolute() and beside.is_dir():
        return str(beside)
    return name


def _load_tensors(file: Path):
    """A .pth of tensors (``weights_only``); anything else in it is refused as untrusted, without
    torch's advice to retry with ``weights_only=False`` (which would run whatever the pickle holds)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported|Unsupported global:?) (?:GLOBAL )?([\w.]+)", str(err))
        what = f"a reference to {found.group(1)}" if found else "objects other than tensors"
        raise ValueError(f"{file} is not trusted: it holds {what}, and unpickling it could run "
                         "any code. clara_lite reads only plain tensors from .pth files: get the checkpoint from its "
                         "original source, or convert it to safetensors where you trust it") from None


def load_upstream(path: Path, opts: dict, overrides: dict, model_cls):
    """An upstream checkpoint as a ``model_cls`` (ClaraModel) with our adapter names."""
    from peft import get_peft_model, set_peft_model_state_dict

    raw = json.loads((path / UPSTREAM_CONFIG).read_text())
    raw["decoder_model_name"] = str(opts["base"]) if opts["base"] else _resolve_base(raw["decoder_model_name"], path)
    known = {"doc_max_length", "compr_rate", "generation_top_k", "quantization", "training_stage", "sep"}
    unknown = set(overrides) - known
    if unknown:
        log.warning("Ignoring upstream options clara_lite does not use: %s", sorted(unknown))
    config = config_from_upstream(raw, {k: v for k, v in overrides.items() if k in known})
    if config.quantization is None and opts.get("plan_quantization"):
        config.quantization = opts["plan_quantization"]  # e.g. a 7B release on a 15 GB T4

    lm, tokenizer = load_base_model(config.base_model, dtype=opts["dtype"], device_map=opts["device_map"],
                                    quantization=config.quantization,
                                    attn_implementation=opts["attn_implementation"])
    tokens = inputs.add_special_tokens(tokenizer, config)
    layers = _load_tensors(path / UPSTREAM_LAYERS)
    emb_rows = layers["model.embed_tokens.weight"].shape[0] if "model.embed_tokens.weight" in layers else len(tokenizer)
    lm.resize_token_embeddings(max(emb_rows, len(tokenizer)), mean_resizing=False)
    state = lm.state_dict()
    for key, value in layers.items():
        if key not in state or state[key].shape != value.shape:
            raise ValueError(f"{path / UPSTREAM_LAYERS}: {key} {tuple(value.shape)} does not fit "
                             f"the base model {config.base_model!r} (is it the right base model?)")
    lm.load_state_dict({k: v.to(state[k].dtype) for k, v in layers.items()}, strict=False)
    greedy_generation(lm, tokenizer)

    adapters = _load_tensors(path / UPSTREAM_ADAPTERS)
    names = [ADAPTER_NAMES.get(k, k) for k in adapters]
    if "encoder" not in names:
        raise ValueError(f"{path / UPSTREAM_ADAPTERS} has no encoder_adapter (has {list(adapters)})")
    order = sorted(adapters, key=lambda k: list(ADAPTER_NAMES).index(k) if k in ADAPTER_NAMES else 9)
    peft = None
    for up_name in order:
        name = ADAPTER_NAMES.get(up_name, up_name)
        if peft is None:
            peft = get_peft_model(lm, lora_config(config), adapter_name=name)
        else:
            peft.add_adapter(name, lora_config(config))
        # upstream also stores the (duplicate) embedding and LM head in every adapter: skip them
        sd = {f"base_model.model.{k}": v for k, v in adapters[up_name].items() if "lora_" in k}
        result = set_peft_model_state_dict(peft, sd, adapter_name=name)
        bad = [k for k in result.unexpected_keys if "lora_" in k]
        missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
        if bad or missing:
            raise ValueError(f"{path / UPSTREAM_ADAPTERS}[{up_name}]: unexpected keys {bad[:3]}, missing {missing[:3]}")
    model = model_cls(peft, tokenizer, config, tokens)
    model.freeze_all_adapters()
    model.eval()
    return model
