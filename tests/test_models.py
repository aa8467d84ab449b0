"""Base-model registry: names, errors, the embedded SmolLM2 cache and tiny-random."""

from __future__ import annotations

import pytest
import torch

from clara_lite.core.layout import cache_dir
from clara_lite.model.base import REGISTRY, UnknownModelError, load_base_model, resolve


def test_registry_has_presets_with_parameter_counts():
    for name in ("smollm2-135m", "tiny-random", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen3-4b",
                 "mistral-7b", "llama-3.2-1b", "llama-3.2-3b", "phi-2"):
        assert REGISTRY[name].params_b > 0
    assert resolve("mistralai/Mistral-7B-Instruct-v0.2").params_b == pytest.approx(7.24)
    assert resolve("someone/some-model").source == "someone/some-model"


def test_unknown_name_lists_the_registry():
    with pytest.raises(UnknownModelError) as err:
        resolve("not a model")
    assert "smollm2-135m" in str(err.value) and "qwen2.5-0.5b" in str(err.value)


def test_tiny_random_is_seeded_and_small():
    a, tok = load_base_model("tiny-random")
    b, _ = load_base_model("tiny-random")
    assert a.config.num_hidden_layers == 2 and a.config.hidden_size == 64
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.slow
def test_smollm2_answers_from_context_and_is_cached():
    model, tok = load_base_model("smollm2-135m")
    cached = cache_dir() / "smollm2-135m"
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert model.num_parameters() == 134_515_008
    messages = [{"role": "user", "content": "Background: Python was created by Guido van Rossum.\n\n"
                                            "Question: Who created Python?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Guido" in answer
