"""A model's fingerprint: what must match for an index's memory vectors to mean anything to it.

Memory vectors are the encoder's output, and only the decoder trained with that encoder reads them;
so the fingerprint holds the settings that shape the vectors (base model, hidden size, memory tokens,
document length, encoder layout), and per adapter (and the embedding rows of CLaRa's added tokens,
and the base's embedding matrix) its tensor count, parameter count and three float64 sums.

Why sums and not a hash of the bytes: the same model loaded in fp16 on a GPU and in fp32 on a CPU
has different bytes but must accept the same index. Sums move by ~1e-4 relative under fp16/bf16
rounding and by orders of magnitude between two trainings, so they are compared with a tolerance.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch

from ..model.saving import added_rows
from ..model.stages import QUERY_REASONER

SETTINGS = ("base_model", "doc_max_length", "compr_rate", "different_mem_tokens", "encoder_layout")
RTOL = 2e-3  # relative to the tensor's absolute sum: fp16 rounds each weight by <= 2^-11 (5e-4)


class FingerprintMismatch(ValueError):
    """An index built with another model (or other settings) than the one it is loaded with."""


def _sums(tensors) -> dict:
    n_tensors, n_params, total, absolute, squares = 0, 0, 0.0, 0.0, 0.0
    for t in tensors:
        n_tensors += 1
        n_params += t.numel()
        for block in t.detach().reshape(-1).split(1 << 22):  # float64 a block at a time: a 7B embedding is 4 GB
            block = block.to(torch.float64)
            total += block.sum().item()
            absolute += block.abs().sum().item()
            squares += block.square().sum().item()
    return {"tensors": n_tensors, "params": n_params, "sum": total, "abs_sum": absolute, "sq_sum": squares}


def _adapter_tensors(model, name: str):
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model.lm, adapter_name=name, save_embedding_layers=False)
    return [state[k] for k in sorted(state)]


def fingerprint(model) -> dict:
    """The fingerprint of a :class:`~clara_lite.model.modeling.ClaraModel` (JSON-ready)."""
    config = model.config.to_dict()
    rows = added_rows(model)
    parts = {name: _sums(_adapter_tensors(model, name)) for name in model.adapter_names}
    parts["added_tokens"] = _sums([rows["input_embeddings"]])
    parts["base_embeddings"] = _sums([model.causal_lm.get_input_embeddings().weight])
    settings = {k: config[k] for k in SETTINGS} | {"n_mem": model.config.n_mem,
                                                   "hidden_size": model.causal_lm.config.hidden_size}
    # a short name for people and folder names: sizes and each part's absolute sum to 3 digits (a
    # retrained model gets another id; fp16/fp32 copies of one model almost always the same)
    rounded = {k: [v["tensors"], v["params"], f"{v['abs_sum']:.3g}"] for k, v in parts.items() if k != QUERY_REASONER}
    digest = hashlib.sha256(json.dumps({"settings": settings, "parts": rounded}, sort_keys=True).encode())
    return {"settings": settings, "parts": parts, "id": digest.hexdigest()[:16]}


def differences(saved: dict, current: dict) -> list[str]:
    """What differs between two fingerprints (empty: compatible). The query reasoner may be added or
    retrained (it reads questions, not the index); the encoder and decoder may not."""
    out = [f"{k}: index {saved['settings'].get(k)!r}, model {current['settings'].get(k)!r}"
           for k in sorted(set(saved["settings"]) | set(current["settings"]))
           if saved["settings"].get(k) != current["settings"].get(k)]
    for part in sorted(set(saved["parts"]) | set(current["parts"])):
        a, b = saved["parts"].get(part), current["parts"].get(part)
        if part == QUERY_REASONER:
            continue
        if a is None or b is None:
            out.append(f"{part}: {'only the index' if b is None else 'only the model'} has it")
            continue
        if (a["tensors"], a["params"]) != (b["tensors"], b["params"]):
            out.append(f"{part}: {a['params']} parameters in the index's model, {b['params']} in this one")
            continue
        scale = max(a["abs_sum"], b["abs_sum"], 1e-12)
        for key, tol in (("sum", RTOL * scale), ("abs_sum", RTOL * scale),
                         ("sq_sum", 2 * RTOL * max(a["sq_sum"], b["sq_sum"], 1e-12))):
            if not math.isclose(a[key], b[key], rel_tol=0, abs_tol=tol):
                out.append(f"{part}: other weights ({key} {a[key]:.6g} in the index's model, {b[key]:.6g} here)")
                break
    return out


def check(saved: dict, current: dict, where: str) -> None:
    """Raise :class:`FingerprintMismatch` naming what differs and what to do."""
    diff = differences(saved, current)
    if diff:
        raise FingerprintMismatch(
            f"{where} was built with another model (fingerprint {saved.get('id')}, this model's is "
            f"{current.get('id')}): " + "; ".join(diff[:4]) + ". Load it with the model it was built with, "
            "or rebuild it for this model (clara-lite index build --out NEW_FOLDER)")
