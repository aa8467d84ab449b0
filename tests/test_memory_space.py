"""memory_space="tokens" and segment_loss_weight: memory vectors the decoder can read from the first step."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from clara_lite import ClaraConfig
from clara_lite.model import inputs
from clara_lite.model.data import QAExample
from clara_lite.model.stages import get_stage

DOCS = ["Orla Vennimark is a cook who lives in Japan.", "Tavi Brask lives in Rome and works as a guard."]


def test_segment_targets_are_each_memory_vectors_share_of_the_text():
    model = tiny_model(doc_max_length=8, compr_rate=4)
    ids = model.tokenizer(DOCS[0], add_special_tokens=False)["input_ids"]
    targets = inputs.segment_targets(model.tokenizer, model.config, [DOCS[0], "Rome"])  # (2, 2, 4)
    assert targets.shape == (2, 2, 4)
    assert targets[0].flatten().tolist() == ids[:8]
    rome = model.tokenizer("Rome", add_special_tokens=False)["input_ids"]
    assert targets[1].flatten().tolist() == rome + [inputs.IGNORE_INDEX] * (8 - len(rome))


def test_the_decoder_reads_token_memory_as_the_embedding_mixture_the_lm_head_predicts():
    hidden = tiny_model(doc_max_length=16, compr_rate=4)
    tokens = tiny_model(doc_max_length=16, compr_rate=4, memory_space="tokens")  # the same seed: same weights
    states, _ = hidden.compress_documents(DOCS)  # (2, 4, H): last hidden states
    memory, _ = tokens.compress_documents(DOCS)
    assert torch.equal(memory, states)  # stored, indexed and scored as hidden states in both spaces
    assert torch.equal(hidden.readable(states), states)
    table = tokens.lm.get_input_embeddings().weight
    expected = F.softmax(tokens.causal_lm.get_output_embeddings()(states).float(), -1) @ table
    read = tokens.readable(memory)
    assert torch.allclose(read, expected, atol=1e-5)
    assert read.norm(dim=-1).max() <= table.norm(dim=-1).max() + 1e-5  # inside the embeddings' hull
    assert states.norm(dim=-1).mean() > read.norm(dim=-1).mean()
    ids = tokens._answer_prompts(["Where does Orla live?"], 1)["input_ids"]
    embeds = tokens.decoder_embeds(ids, memory[:1])
    slots = torch.isin(ids, torch.tensor(tokens.tokens.mem_ids))
    assert torch.allclose(embeds[slots], read[0], atol=1e-6)
    with pytest.raises(ValueError, match="memory_space .*must be one of"):
        ClaraConfig(memory_space="latent")


def test_segment_loss_is_the_memory_vectors_nll_of_their_segments_and_training_lowers_it():
    model = tiny_model(doc_max_length=16, compr_rate=4, memory_space="tokens", segment_loss_weight=1.0, mse_weight=0.0)
    stage = get_stage("stage2")
    rows = [QAExample("Where does Orla Vennimark live?", (DOCS[0],), ("Japan",)),
            QAExample("Where does Tavi Brask live?", (DOCS[1],), ("Rome",))]
    batch = stage.collator(model)(rows)
    enc = batch["enc"]
    assert enc["segments"].shape == (2, 4, 4)
    assert "segments" not in model._encode(DOCS)  # inference (compressing, indexing, queries) builds no targets
    model.eval()
    with torch.no_grad():
        _, _, segment = model.compress_for_training(enc)
        states, _ = model.compress(enc)
        logp = F.log_softmax(model.causal_lm.get_output_embeddings()(states).float(), -1)
        per_doc = []
        for b in range(2):
            picked = [logp[b, i, t] for i in range(4) for t in enc["segments"][b, i].tolist() if t >= 0]
            per_doc.append(-torch.stack(picked).mean())
    assert segment.item() == pytest.approx(torch.stack(per_doc).mean().item(), rel=1e-5)

    stage.prepare(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    history = []
    for _ in range(8):
        loss, metrics = stage.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        history.append(metrics["segment_loss"])
    assert history[-1] < history[0]
    assert loss.item() == pytest.approx(metrics["lm_loss"] + metrics["segment_loss"], rel=1e-4)


def test_segment_positions_put_each_memory_token_beside_the_segment_it_compresses():
    """memory_positions="segments": memory token i takes the position id of the last token of segment i (the tokens
    segment_targets gives it), whatever the padding; "after" keeps the positions running past the document."""
    after = tiny_model(doc_max_length=16, compr_rate=4)
    beside = tiny_model(doc_max_length=16, compr_rate=4, memory_positions="segments")
    texts = [DOCS[0] + " " + DOCS[1], "Rome"]  # a full document and a short one (left-padded)
    enc = inputs.encode_texts(beside.tokenizer, beside.tokens, beside.config, texts)
    targets = inputs.segment_targets(beside.tokenizer, beside.config, texts)
    pos, ids, m = enc["position_ids"], enc["input_ids"], beside.config.n_mem
    assert pos[:, -m:].tolist() == [[5, 9, 13, 17]] * 2
    for i in range(m):  # the text token at memory token i's position is the last of its segment
        at = (pos[0, :-m] == pos[0, -m + i]).nonzero().item()
        assert ids[0, at].item() == targets[0, i, -1].item()
    plain = inputs.encode_texts(after.tokenizer, after.tokens, after.config, texts)
    assert torch.equal(plain["input_ids"], ids) and torch.equal(plain["position_ids"][:, :-m], pos[:, :-m])
    assert plain["position_ids"][0, -m:].tolist() == list(range(int(pos[0, -m - 1]) + 1, int(pos[0, -m - 1]) + 1 + m))
    memory, _ = beside.compress_documents(DOCS)  # the same weights (seed), other positions: other memory
    assert memory.shape == after.compress_documents(DOCS)[0].shape
    assert not torch.allclose(memory, after.compress_documents(DOCS)[0], atol=1e-3)
    with pytest.raises(ValueError, match="memory_positions .*must be one of"):
        ClaraConfig(memory_positions="middle")


def test_configs_written_with_the_old_words_load_as_todays(tmp_path):
    """Runs and models saved before the rename say chunk_loss_weight / memory_positions="chunks"."""
    old = ClaraConfig(segment_loss_weight=0.5, memory_positions="segments").to_dict()
    old["chunk_loss_weight"] = old.pop("segment_loss_weight")
    old["memory_positions"] = "chunks"
    from clara_lite.core.layout import CONFIG_FILE

    (tmp_path / CONFIG_FILE).write_text(json.dumps(old))
    config = ClaraConfig.load(tmp_path)
    assert (config.segment_loss_weight, config.memory_positions) == (0.5, "segments")
    assert "chunk_loss_weight" not in config.to_dict()
