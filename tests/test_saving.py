"""Save -> load in our format gives identical outputs; checkpoints hold adapters, not the base."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_model

from clara_lite import ClaraModel
from clara_lite.model.stages import get_stage

QUESTIONS = ["Who wrote the first program?", "Which river is longest?"]
DOCS = [["Ada Lovelace wrote the first program.", "Paris is in France."],
        ["The Nile is the longest river.", "Water boils at 100 C."]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = tiny_model(seed=3)
    get_stage("stage3").prepare(model)
    with torch.no_grad():  # make every adapter matter for the outputs
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    return model, path


def test_files_written(trained):
    _, path = trained
    for name in ("encoder", "decoder", "query_reasoner"):
        assert (path / "adapters" / name / "adapter_model.safetensors").is_file()
        assert json.loads((path / "adapters" / name / "adapter_config.json").read_text())["r"] == 4
    assert (path / "added_tokens.safetensors").is_file() and (path / "tokenizer").is_dir()
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "tokenizer" not in f.parts)
    assert total < 2_000_000  # adapters + 7 embedding rows, not the 13 MB base model
    assert json.loads((path / "clara_config.json").read_text())["encoder_layout"] == "compact"


def test_reload_gives_identical_outputs(trained):
    model, path = trained
    again = ClaraModel.from_pretrained(path)
    assert again.adapter_names == model.adapter_names
    flat = [d for ds in DOCS for d in ds]
    a, _ = model.compress_documents(flat)
    b, _ = again.compress_documents(flat)
    assert torch.equal(a, b)
    assert model.generate_from_text(QUESTIONS, DOCS, max_new_tokens=6) == again.generate_from_text(
        QUESTIONS, DOCS, max_new_tokens=6)
    ids_a = model.last_output_ids.clone()
    again.generate_from_text(QUESTIONS, DOCS, max_new_tokens=6)
    assert torch.equal(ids_a, again.last_output_ids)
    ans_a, top_a = model.generate_from_questions(QUESTIONS, DOCS, max_new_tokens=6)
    ans_b, top_b = again.generate_from_questions(QUESTIONS, DOCS, max_new_tokens=6)
    assert ans_a == ans_b and torch.equal(top_a, top_b)


def test_reload_in_another_dtype(trained):
    model, path = trained
    half = ClaraModel.from_pretrained(path, torch_dtype=torch.bfloat16)
    assert half.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    flat = [d for ds in DOCS for d in ds]
    a, _ = model.compress_documents(flat)
    b, _ = half.compress_documents(flat)
    assert b.dtype == torch.bfloat16
    assert ((a - b.float()).norm() / a.norm()).item() < 0.05


def test_unknown_override_is_rejected(trained):
    _, path = trained
    with pytest.raises(ValueError, match="Unknown option"):
        ClaraModel.from_pretrained(path, not_an_option=3)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a clara_lite model"):
        ClaraModel.from_pretrained(tmp_path)
