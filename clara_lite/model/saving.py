"""Our checkpoint format: adapters, added-token rows, config, tokenizer; never the base model.

    <dir>/clara_config.json
    <dir>/adapters/<name>/adapter_model.safetensors + adapter_config.json   (plain PEFT folders)
    <dir>/added_tokens.safetensors   (embedding rows of CLaRa's added tokens, float32)
    <dir>/tokenizer/                 (tokenizer with the added tokens)

Loads on any device/dtype: adapters and rows are stored in float32 and cast on load.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.config import ClaraConfig
from ..core.hardware import detect_hardware, dtype_name
from ..core.layout import (
    ADAPTER_WEIGHTS,
    ADAPTERS_DIR,
    ADDED_TOKENS_FILE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    FINAL_DIR,
    TOKENIZER_DIR,
    UPSTREAM_ADAPTERS,
    ZIPS_DIR,
)
from ..io.unzip import extract_zip
from . import inputs
from .adapters import prepare_base
from .base import UnknownModelError, load_base_model, resolve
from .hub import resolve_model_path
from .size import model_params_b
from .stages import QUERY_REASONER
from .upstream import load_upstream

log = logging.getLogger(__name__)


class BaseModelMissing(FileNotFoundError):
    """The base model a saved model needs is not on this machine."""


# what upstream users pass to from_pretrained and we accept without effect
_IGNORED = {"trust_remote_code", "low_cpu_mem_usage", "revision", "cache_dir", "local_files_only"}


def save_model(model, directory) -> Path:
    """Write ``model`` in our format to ``directory`` (created if needed)."""
    from peft import get_peft_model_state_dict

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save(out)
    for name in model.adapter_names:
        sub = out / ADAPTERS_DIR / name
        sub.mkdir(parents=True, exist_ok=True)
        model.lm.peft_config[name].save_pretrained(sub)
        state = get_peft_model_state_dict(model.lm, adapter_name=name, save_embedding_layers=False)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, sub / ADAPTER_WEIGHTS)
    save_file(added_rows(model), out / ADDED_TOKENS_FILE)
    model.tokenizer.save_pretrained(out / TOKENIZER_DIR)
    return out


def added_rows(model) -> dict[str, torch.Tensor]:
    ids = torch.tensor(model.tokens.added_ids, dtype=torch.long)
    lm = model.causal_lm
    rows = {"ids": ids, "input_embeddings": lm.get_input_embeddings().weight[ids.to(model.device)].detach()}
    out_emb = lm.get_output_embeddings()
    if out_emb is not None and out_emb.weight.data_ptr() != lm.get_input_embeddings().weight.data_ptr():
        rows["output_embeddings"] = out_emb.weight[ids.to(out_emb.weight.device)].detach()  # may sit elsewhere
    return {k: v.float().cpu().contiguous() if v.is_floating_point() else v.cpu() for k, v in rows.items()}


def _load_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """Split upstream-style kwargs into load options and config overrides."""
    kwargs = dict(kwargs)
    for key in _IGNORED & set(kwargs):
        kwargs.pop(key)
    opts = {
        "dtype": kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None),
        "device_map": kwargs.pop("device_map", None),
        "attn_implementation": kwargs.pop("attn_implementation", None),
        "base_path": kwargs.pop("base_path", None),
    }
    kwargs.pop("torch_dtype", None)
    # the base model, as our users and upstream's name it (base_path wins; the rest stay overrides then)
    opts["base"] = opts["base_path"] or kwargs.pop("decoder_model_name", None) or kwargs.pop("base_model", None)
    if isinstance(opts["dtype"], str) and opts["dtype"] != "auto":
        opts["dtype"] = getattr(torch, opts["dtype"])
    if opts["dtype"] == "auto":
        opts["dtype"] = None
    return opts, kwargs


def load_model(path, *, model_cls, **kwargs):
    """Dispatch on what ``path`` holds: our format, an upstream checkpoint, or an exported zip
    (unpacked safely into the cache first; ``cache_dir=`` is the cache root). ``model_cls`` is the
    class to build (:class:`~clara_lite.model.modeling.ClaraModel`, which calls this).

    ``path`` may be a Hugging Face id, with ``subfolder=`` (or as ``org/name/subfolder``): only the
    model's files are fetched, into the Hub's cache. On a GPU machine what is not given follows the
    hardware plan: its dtype (not fp32), the GPU itself, its attention, and 4-bit when the model would
    not fit otherwise; on a CPU the defaults stay fp32 and full precision."""
    subfolder, revision = kwargs.pop("subfolder", None), kwargs.pop("revision", None)
    path = source = resolve_model_path(path, subfolder, revision=revision)
    if path.is_file() and path.suffix == ".zip":
        cache = kwargs.pop("cache_dir", None)
        path = extract_zip(path, Path(cache) / ZIPS_DIR if cache else None)
    opts, overrides = _load_kwargs(kwargs)
    _gpu_defaults(path, opts, overrides)
    if (path / UPSTREAM_ADAPTERS).is_file():
        return load_upstream(path, opts, overrides, model_cls)
    if (path / CONFIG_FILE).is_file():
        check_base(path, kwargs, source=source)
        return _load_ours(path, opts, overrides, model_cls)
    raise FileNotFoundError(
        f"{path} is not a clara_lite model (no {CONFIG_FILE}) nor an upstream CLaRa checkpoint "
        f"(no {UPSTREAM_ADAPTERS}){_models_inside(path)}"
    )


def _models_inside(path: Path) -> str:
    """Where the models are when ``path`` is a stage folder (its final/, else its newest checkpoint's model/)
    or a run folder (each stage's final/): pointing at the folder above a model is the usual slip."""
    if not path.is_dir():
        return ""
    found = [p for p in (path / FINAL_DIR, *sorted(path.glob(f"*/{FINAL_DIR}"))) if (p / CONFIG_FILE).is_file()]
    if not found:
        found = [p for p in sorted(path.glob(f"{CHECKPOINTS_DIR}/step-*/model"))[-1:] if (p / CONFIG_FILE).is_file()]
    return f"; the model{'s' if len(found) > 1 else ''} inside: {', '.join(map(str, found))}" if found else ""


def _gpu_defaults(path: Path, opts: dict, overrides: dict) -> None:
    """On CUDA, fill what the caller left open from the hardware plan for this model (in place)."""
    if not torch.cuda.is_available() or opts["dtype"] is not None:
        return
    profile = detect_hardware(model_params_b(str(opts["base"] or path)))
    opts["dtype"] = profile.dtype
    if opts["device_map"] is None:
        opts["device_map"] = f"cuda:{torch.cuda.current_device()}"  # straight to the GPU: no CPU RAM copy
    opts["attn_implementation"] = opts["attn_implementation"] or profile.attn_implementation
    if "quantization" not in overrides and profile.load_in_4bit:
        opts["plan_quantization"] = "4bit"  # applied only when the model's config leaves it unset
    log.info("GPU load: %s on %s, %s%s", dtype_name(profile.dtype), opts["device_map"], opts["attn_implementation"],
             ", 4-bit: " + profile.reason("load_in_4bit") if profile.load_in_4bit else "")


def check_base(folder, kwargs: dict, source=None) -> None:
    """Fail naming the base model and ``base_path`` when the base cannot be found on this machine."""
    base, given = ClaraConfig.load(folder).base_model, kwargs.get("base_path")
    try:
        resolve(str(given or base))
    except UnknownModelError as err:
        where = f"base_path {str(given)!r} (for base model {base!r})" if given else f"its base model {base!r}"
        raise BaseModelMissing(
            f"{source or folder} needs {where}, which is not on this machine. Pass a local copy of {base!r}: "
            f"base_path='/path/to/base' in Python, --base-path P on the command line.\n{err}") from None


def _load_ours(path: Path, opts: dict, overrides: dict, model_cls):
    from peft import PeftModel
    from transformers import AutoTokenizer

    data = ClaraConfig.load(path).to_dict()
    if opts["base"]:
        data["base_model"] = str(opts["base"])
    unknown = set(overrides) - set(data)
    if unknown:
        raise ValueError(f"Unknown option(s) for from_pretrained: {sorted(unknown)}")
    data.update(overrides)
    config = ClaraConfig.from_dict(data)
    if config.quantization is None and opts.get("plan_quantization"):
        config.quantization = opts["plan_quantization"]

    base, _ = load_base_model(config.base_model, dtype=opts["dtype"], device_map=opts["device_map"],
                              quantization=config.quantization, attn_implementation=opts["attn_implementation"])
    tokenizer = AutoTokenizer.from_pretrained(path / TOKENIZER_DIR)
    tokens = inputs.add_special_tokens(tokenizer, config)  # already present: only looks ids up
    base = prepare_base(base, tokenizer, config, mean_resizing=False)  # the saved rows overwrite new ones
    _set_rows(base, load_file(path / ADDED_TOKENS_FILE))

    names = sorted(os.listdir(path / ADAPTERS_DIR), key=_adapter_order)
    lm = PeftModel.from_pretrained(base, path / ADAPTERS_DIR / names[0], adapter_name=names[0], is_trainable=True)
    for name in names[1:]:
        lm.load_adapter(path / ADAPTERS_DIR / name, adapter_name=name, is_trainable=True)
    model = model_cls(lm, tokenizer, config, tokens)
    model.freeze_all_adapters()
    model.eval()
    return model


def _adapter_order(name: str) -> int:
    order = ("encoder", "decoder", QUERY_REASONER)
    return order.index(name) if name in order else len(order)


def _set_rows(base, rows: dict) -> None:
    ids = rows["ids"].long()
    with torch.no_grad():
        emb = base.get_input_embeddings().weight
        emb[ids.to(emb.device)] = rows["input_embeddings"].to(emb.device, emb.dtype)
        if "output_embeddings" in rows:
            out = base.get_output_embeddings().weight
            out[ids.to(out.device)] = rows["output_embeddings"].to(out.device, out.dtype)
