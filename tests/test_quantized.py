"""QLoRA on CPU: a 4-bit (nf4) or 8-bit tiny model trains its adapters, never its base weights,
and a saved 4-bit model reloads in 4-bit with the same compressed documents."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_model
from peft.tuners.tuners_utils import BaseTunerLayer

from clara_lite import ClaraModel
from clara_lite.model.data import Stage1Example
from clara_lite.model.stages import get_stage

bnb = pytest.importorskip("bitsandbytes")

DOCS = ["Ada Lovelace wrote the first program in 1843.", "The Nile is the longest river in Africa."]
ROWS = [
    Stage1Example("qa", ("Who wrote the first program?", "When?"), ("Ada Lovelace", "1843"), (DOCS[0],)),
    Stage1Example("paraphrase", (), ("The longest African river is the Nile.",), (DOCS[1],)),
]
LINEAR = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}


def quantized_model(quantization: str) -> ClaraModel:
    """The tiny model with its body quantized, or a skip if this bitsandbytes has no CPU kernel."""
    try:
        return tiny_model(quantization=quantization, generation_top_k=1)
    except NotImplementedError as err:
        pytest.skip(f"bitsandbytes {quantization} is not implemented on CPU here: {err}")


def base_linears(model: ClaraModel) -> dict:
    """The base layer under every LoRA-wrapped Linear (the lm_head is never quantized nor wrapped)."""
    return {name: m.base_layer for name, m in model.lm.named_modules() if isinstance(m, BaseTunerLayer)}


def assert_quantized(model: ClaraModel, quantization: str) -> None:
    layers = base_linears(model)
    assert len(layers) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    for name, layer in layers.items():
        assert isinstance(layer, getattr(bnb.nn, LINEAR[quantization])), f"{name} is {type(layer).__name__}"
        if quantization == "4bit":
            assert layer.weight.quant_type == "nf4" and layer.weight.compress_statistics  # double quant


def frozen_state(model: ClaraModel) -> dict[str, torch.Tensor]:
    """Copies of the quantized weights and their scales, plus the (float) embeddings."""
    state = {"embed_tokens": model.lm.get_input_embeddings().weight.detach().clone()}
    for name, layer in base_linears(model).items():
        w = layer.weight
        state[name] = w.data.clone()
        qs = getattr(w, "quant_state", None)
        if qs is not None:  # 4-bit: per-block absmax (itself quantized with double quant)
            state[name + ".absmax"] = qs.absmax.clone()
        if hasattr(layer, "state"):  # 8-bit: per-row scales, moved to layer.state by the first forward
            scb = layer.state.SCB if layer.state.SCB is not None else w.SCB
            state[name + ".SCB"] = scb.clone()
    return state


def lora_state(model: ClaraModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.lm.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_model_trains_only_its_adapters(quantization):
    model = quantized_model(quantization)
    assert_quantized(model, quantization)
    stage = get_stage("stage1")
    stage.prepare(model)
    model.train()
    trainable = [(n, p) for n, p in model.lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable)
    frozen, lora = frozen_state(model), lora_state(model)
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-2)

    batch = stage.collator(model)(ROWS)
    try:
        loss, metrics = stage.loss(model, batch)
        loss.backward()
    except NotImplementedError as err:
        pytest.skip(f"bitsandbytes {quantization} training is not implemented on CPU here: {err}")
    optimizer.step()

    assert torch.isfinite(loss) and metrics["lm_loss"] > 0
    after = lora_state(model)
    changed = {
        a: any(not torch.equal(lora[n], after[n]) for n in lora if f".{a}." in n)
        for a in ("encoder", "decoder")
    }
    assert changed == {"encoder": True, "decoder": True}
    assert_quantized(model, quantization)
    now = frozen_state(model)
    assert now.keys() == frozen.keys()
    for name, value in frozen.items():
        assert torch.equal(value, now[name]), f"frozen {name} changed"


def test_4bit_save_and_reload(tmp_path):
    model = quantized_model("4bit")
    with torch.no_grad():  # make both adapters matter for the memory vectors
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.eval()
    model.save_pretrained(tmp_path)

    for name in ("encoder", "decoder"):
        assert (tmp_path / "adapters" / name / "adapter_model.safetensors").is_file()
        assert (tmp_path / "adapters" / name / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "clara_config.json").read_text())["quantization"] == "4bit"
    total = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file() and "tokenizer" not in f.parts)
    assert total < 2_000_000  # adapters and added-token rows, no base weights

    again = ClaraModel.from_pretrained(tmp_path)
    assert again.config.quantization == "4bit"
    assert_quantized(again, "4bit")
    assert again.adapter_names == model.adapter_names
    a, _ = model.compress_documents(DOCS)
    b, _ = again.compress_documents(DOCS)
    assert a.shape == (2, model.config.n_mem, 64)
    assert torch.equal(a, b)


def test_4bit_bf16_reload_matches_the_fresh_model(tmp_path):
    torch.manual_seed(0)
    model = ClaraModel.from_base(
        "tiny-random",
        quantization="4bit",
        dtype=torch.bfloat16,
        doc_max_length=32,
        compr_rate=8,
        lora_r=4,
        lora_dropout=0.0,
        generation_top_k=1,
    )
    model.save_pretrained(tmp_path)
    again = ClaraModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    fresh_dtypes = {n: p.dtype for n, p in model.lm.named_parameters() if "lora_" not in n}
    assert {n: p.dtype for n, p in again.lm.named_parameters() if "lora_" not in n} == fresh_dtypes
    assert torch.equal(model.compress_documents(DOCS)[0], again.compress_documents(DOCS)[0])
