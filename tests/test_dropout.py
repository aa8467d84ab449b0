"""LoRA dropout with one mask per distinct input: every layer still drops at the recipe's rate."""

from __future__ import annotations

import torch
from helpers import tiny_model

from clara_lite.model.adapters import SharedDropout
from clara_lite.model.data import QAExample
from clara_lite.model.stages import get_stage


def test_shared_dropout_keeps_rate_and_scale_and_shares_only_the_same_input():
    torch.manual_seed(0)
    drop = SharedDropout(0.1).train()
    x, y = torch.ones(400, 500), torch.ones(400, 500)
    out = drop(x)
    assert abs((out == 0).float().mean().item() - 0.1) < 0.005
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.9))
    assert drop(x) is out  # the same tensor again: the same dropped copy
    other = drop(y)  # an equal but different tensor: a mask of its own
    assert abs((other == 0).float().mean().item() - 0.1) < 0.005
    assert ((other == 0) & (out == 0)).float().mean().item() < 0.02  # ~0.01 when independent
    assert drop.eval()(x) is x


def test_every_lora_layer_of_a_training_step_sees_the_recipe_rate():
    model = tiny_model(lora_dropout=0.25, doc_max_length=64, compr_rate=8)
    stage = get_stage("stage2")
    stage.prepare(model)
    model.train()
    seen = {}

    def hook(name):
        def record(_module, args):
            seen.setdefault(name, []).append(args[0].detach().clone())
        return record

    handles = [m.lora_A["encoder"].register_forward_pre_hook(hook(n)) for n, m in model.lm.named_modules()
               if hasattr(m, "lora_A") and "encoder" in m.lora_A]
    text = "Ada Lovelace wrote the first program for the analytical engine of Charles Babbage. " * 3
    batch = stage.collator(model)([QAExample("Who wrote it?", (text, text), ("Ada",))])
    model.compress(batch["enc"])
    for h in handles:
        h.remove()
    assert len(seen) >= 7
    for name, inputs in seen.items():
        rate = (inputs[0] == 0).float().mean().item()
        assert 0.2 < rate < 0.3, (name, rate)  # activations are never exactly 0 otherwise
    by_layer = {}
    for name, inputs in seen.items():
        by_layer.setdefault(name.rsplit(".", 2)[0], {})[name.rsplit(".", 1)[-1]] = inputs[0]
    for layer, mods in by_layer.items():  # q/k/v read one tensor: one mask
        if {"q_proj", "k_proj", "v_proj"} <= set(mods):
            assert torch.equal(mods["q_proj"], mods["k_proj"]) and torch.equal(mods["k_proj"], mods["v_proj"]), layer
