"""Getting a base model ready for CLaRa's LoRA adapters: shared by fresh models, reloads and upstream loads,
so all three end up the same."""

from __future__ import annotations

from ..config import ClaraConfig


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
    if config.quantization:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    greedy_generation(base, tokenizer)
    return base
