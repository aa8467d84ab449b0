"""Each stage trains exactly its adapters; batches have the shapes the model expects."""

from __future__ import annotations

import zlib

import pytest
import torch
from helpers import tiny_model

from clara_lite.model.data import QAExample, Stage1Example
from clara_lite.model.stages import get_stage

DOCS = ["Ada Lovelace wrote the first program in 1843.", "The Nile is the longest river in Africa."]
STAGE1 = [
    Stage1Example("qa", ("Who wrote the first program?", "When?"), ("Ada Lovelace", "1843"), (DOCS[0],)),
    Stage1Example("paraphrase", (), ("The longest African river is the Nile.",), (DOCS[1],)),
]
QA = [
    QAExample("Who wrote the first program?", tuple(DOCS), ("Ada Lovelace",), (0,)),
    QAExample("Which river is longest in Africa?", tuple(reversed(DOCS)), ("The Nile",), (0,)),
]


def _grads_by_adapter(model):
    seen = {}
    for name, p in model.lm.named_parameters():
        if "lora_" not in name:
            assert p.grad is None, f"base weight {name} got a gradient"
            continue
        adapter = next(a for a in ("encoder", "decoder", "query_reasoner") if f".{a}." in name)
        has = p.grad is not None and p.grad.abs().sum().item() > 0
        seen[adapter] = seen.get(adapter, False) or has
    return seen


@pytest.mark.parametrize(
    "stage_name,rows,expected",
    [
        ("stage1", STAGE1, {"encoder": True, "decoder": True}),
        ("stage2", QA, {"encoder": True, "decoder": True}),
        ("stage3", QA, {"encoder": False, "decoder": True, "query_reasoner": True}),
    ],
)
def test_exactly_the_intended_adapters_get_gradients(stage_name, rows, expected):
    model = tiny_model(contrastive_weight=0.0)
    stage = get_stage(stage_name)
    stage.prepare(model)
    model.train()
    # LoRA B starts at zero, so A would get no gradient: give B a value first
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = stage.collator(model)(rows)
    loss, metrics = stage.loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert _grads_by_adapter(model) == expected
    assert metrics["lm_loss"] > 0


def test_stage1_batch_shapes_and_labels():
    model = tiny_model()
    batch = get_stage("stage1").collator(model)(STAGE1)
    enc, dec = batch["enc"], batch["dec"]
    n_mem = model.config.n_mem
    assert enc["input_ids"].shape[0] == 2 and (enc["input_ids"][:, -n_mem:] == torch.tensor(model.tokens.mem_ids)).all()
    # compact layout: padded to the longest document, not to doc_max_length + 3
    assert enc["input_ids"].shape[1] < model.config.doc_max_length + 3 + n_mem
    labels = dec["labels"]
    assert labels.shape == dec["input_ids"].shape
    # prompt and padding are ignored; the answer tokens are scored
    for i in range(2):
        scored = labels[i][labels[i] != -100]
        assert 0 < scored.numel() < dec["attention_mask"][i].sum()
    text = model.tokenizer.decode(labels[0][labels[0] != -100])
    assert "Question: Who wrote the first program?\nAnswer: Ada Lovelace" in text


def test_stage3_starts_query_reasoner_from_encoder():
    model = tiny_model()
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if ".encoder." in name and "lora_B" in name:
                p.normal_(0, 0.1)
    get_stage("stage3").prepare(model)
    enc_params = {n.replace(".encoder.", ".X."): p for n, p in model.lm.named_parameters() if ".encoder." in n}
    qr_params = {n.replace(".query_reasoner.", ".X."): p for n, p in model.lm.named_parameters()
                 if ".query_reasoner." in n}
    assert enc_params.keys() == qr_params.keys() and len(enc_params) > 0
    assert all(torch.equal(enc_params[k], qr_params[k]) for k in enc_params)


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(ValueError, match="stage1, stage2, stage3"):
        get_stage("stage1_2")


def test_gradient_checkpointing_recomputes_under_the_right_adapter():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=1)
        with torch.no_grad():
            for name, p in model.lm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
        stage = get_stage("stage1")
        stage.prepare(model)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        loss, _ = model(stage.collator(model)(STAGE1), stage)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.lm.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name


STAGE1_UNEVEN = [
    Stage1Example("qa", ("Who wrote the first program?",), ("Ada Lovelace",), (DOCS[0],)),
    Stage1Example("paraphrase", (), ("The longest African river is the Nile, which flows north for 6,650 km.",),
                  (DOCS[1],)),
    Stage1Example("qa", ("When?", "Where?"), ("1843", "London"), ("Ada Lovelace wrote it in London in 1843.",)),
    Stage1Example("paraphrase", (), ("Short.",), ("A short one.",)),
]
QA_UNEVEN = [
    QAExample("Who wrote the first program?", tuple(DOCS), ("Ada Lovelace",), (0,)),
    QAExample("Which river is the longest in all of Africa, by length?", tuple(reversed(DOCS)), ("The Nile",), ()),
    QAExample("When?", tuple(DOCS), ("In the year 1843, in London",), (0,)),
    QAExample("Longest river?", tuple(reversed(DOCS)), ("Nile",), (0,)),
]


@pytest.mark.parametrize("stage_name,rows", [("stage1", STAGE1_UNEVEN), ("stage2", QA_UNEVEN), ("stage3", QA_UNEVEN)])
def test_a_step_has_the_same_gradient_however_it_is_cut_into_micro_batches(stage_name, rows, tmp_path):
    """Losses are step-wide means (answer tokens, documents, queries with a gold doc), so 4 rows as
    one padded batch, as 1+3 or as four 1-row micro-batches give one and the same update."""
    from clara_lite.core.config import TrainConfig
    from clara_lite.train.update import make_accelerator, optimizer_step

    stage = get_stage(stage_name)
    results = []
    for cut in ([4], [1, 3], [1, 1, 1, 1]):
        model = tiny_model(contrastive_weight=0.5)
        stage.prepare(model)
        model.train()
        with torch.no_grad():  # LoRA B starts at zero: give it values so every LoRA weight moves
            for name, p in model.lm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        params = [p for p in model.parameters() if p.requires_grad]
        collate = stage.collator(model)
        starts = [sum(cut[:i]) for i in range(len(cut))]
        batches = [collate(rows[s : s + n]) for s, n in zip(starts, cut, strict=True)]
        acc = make_accelerator(TrainConfig(), tmp_path)
        # plain SGD, lr 1: the update is the gradient itself (Adam's first step would hide its scale)
        metrics = optimizer_step(acc, model, stage, batches, params, torch.optim.SGD(params, lr=1.0), None)
        update = {n: before[n] - p.detach() for n, p in model.named_parameters() if n in before}
        results.append((metrics, update))
    (m_ref, u_ref) = results[0]
    assert set(m_ref) >= {"loss", "lm_loss"} and m_ref["loss"] > 0
    assert max(v.abs().max().item() for v in u_ref.values()) > 1e-4  # the step did move weights
    for metrics, update in results[1:]:
        assert metrics.keys() == m_ref.keys()
        for key in m_ref:
            assert metrics[key] == pytest.approx(m_ref[key], rel=1e-5, abs=1e-7), key
        worst = max(((update[n] - u_ref[n]).abs().max() / u_ref[n].abs().max().clamp_min(1e-12)).item() for n in u_ref)
        assert worst < 1e-4
