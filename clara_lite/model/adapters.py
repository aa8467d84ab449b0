"""Getting a base model ready for CLaRa's LoRA adapters: shared by fresh models, reloads and upstream loads,
so all three end up the same."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..core.config import ClaraConfig, is_quantized


def lora_config(config: ClaraConfig):
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )


def greedy_generation(base, tokenizer) -> None:
    """Greedy decoding with the tokenizer's pad id: no sampling knobs left from the base's config."""
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    for attr in ("temperature", "top_p", "top_k"):
        setattr(base.generation_config, attr, None)


def prepare_base(base, tokenizer, config: ClaraConfig, *, mean_resizing: bool = True):
    """Make room for CLaRa's tokens, ready a quantized base for LoRA (fp32 embeddings and norms),
    and set greedy generation. Shared by fresh models and reloads so both end up the same."""
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer), mean_resizing=mean_resizing)
    if is_quantized(config.quantization):
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    greedy_generation(base, tokenizer)
    return base


class SharedDropout(nn.Module):
    """LoRA dropout that draws one mask per distinct input tensor.

    PEFT gives every LoRA layer its own ``nn.Dropout``, so q/k/v (one input) and gate/up (one input)
    each draw a fresh Bernoulli mask over the same activation and multiply it again: about a fifth of
    a CPU training step. Layers that read the same tensor now share one dropped copy. Each layer still
    sees dropout at rate ``p`` with the same scaling (the recipe's distribution per layer is unchanged);
    what changes is that masks are correlated across layers reading one input, and the RNG stream
    (fewer draws). Recomputation under gradient checkpointing draws the same masks: the layer's calls
    come in the same order, so the same calls miss the one-slot cache.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self._last: tuple | None = None  # (input, dropped input) of the last call in training mode

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        last = self._last
        if last is not None and last[0] is x:  # identity, not equality: the very same activation
            return last[1]
        out = F.dropout(x, self.p, training=True)
        self._last = (x, out)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, shared per input"


def share_dropout(lm) -> int:
    """Replace each LoRA layer's ``nn.Dropout`` in ``lm`` by one :class:`SharedDropout` per rate;
    returns how many were replaced (layers added later need another call)."""
    shared: dict[float, SharedDropout] = {}
    replaced = 0
    for module in lm.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if type(drop) is nn.Dropout and drop.p > 0:
                drops[name] = shared.setdefault(drop.p, SharedDropout(drop.p))
                replaced += 1
    return replaced
