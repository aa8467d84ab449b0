"""Small builders shared by tests (not fixtures of our code's behaviour)."""

from __future__ import annotations

import torch

from clara_lite import ClaraModel


def tiny_model(seed: int = 0, adapters=("encoder", "decoder"), **config) -> ClaraModel:
    """A seeded tiny-random ClaraModel (2 layers, hidden 64) on CPU, fp32."""
    kw = dict(doc_max_length=32, compr_rate=8, generation_top_k=2, lora_r=4, lora_dropout=0.0)
    kw.update(config)
    torch.manual_seed(seed)
    return ClaraModel.from_base("tiny-random", seed=seed, adapters=adapters, **kw)
