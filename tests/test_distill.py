"""Distillation targets (``TrainConfig.targets``): the text-reading teacher's answers are generated once, for the
rows a stage reads, cached in the run folder (a rerun or a later stage generates nothing), kept across an
interrupted pass, and become the targets the stage's prompts train on."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_RUN, tiny_model

from clara_lite.core.config import TrainConfig
from clara_lite.model.data import read_jsonl
from clara_lite.model.inputs import IGNORE_INDEX
from clara_lite.model.modeling import ClaraModel
from clara_lite.model.rows import QAExample, Stage1Example
from clara_lite.model.stages import get_stage
from clara_lite.model.teacher import TeacherCache, cut_answer, teacher_answers
from clara_lite.train.distill import distill_targets, rows_read, teacher_docs
from clara_lite.train.launch import train
from clara_lite.train.recipe import load_recipe
from clara_lite.train.run import RunError


@pytest.fixture(scope="module")
def talking_base(tmp_path_factory):
    """tiny-random with its own (untied, seeded) output layer, as a local base-model folder. tiny-random ties it to
    the input embeddings, so its greedy answer repeats the prompt's last token (a newline: the empty answer)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from clara_lite.model.base import load_base_model, tiny_random_config

    folder = tmp_path_factory.mktemp("talking_base")
    config = tiny_random_config()
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    _, tokenizer = load_base_model("tiny-random")
    AutoTokenizer.from_pretrained(tokenizer.name_or_path).save_pretrained(folder)
    return str(folder)


def _model(base: str) -> ClaraModel:
    return ClaraModel.from_base(base, seed=0, doc_max_length=16, compr_rate=4, lora_r=4, lora_dropout=0.0)


def _count_generate(model) -> list:
    """Counts calls of the model's (transformers') ``generate``, calling through to it."""
    calls, generate = [], model.lm.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    model.lm.generate = counted
    return calls


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_teacher_stage_asks_each_question_it_reads_once_and_trains_on_the_answers(tmp_path, data_dir, talking_base):
    run = tmp_path / "run"
    options = {"max_steps": 2, "micro_batch_size": 2, "grad_accum_steps": 1, "targets": "teacher", "teacher_max_new_tokens": 4,
               "save_steps": 0, "save_minutes": 0}
    train(run, "stage1", data=str(data_dir / "stage1.jsonl"), model_options={**TINY_RUN, "base_model": talking_base},
          train_options=options)
    cache = run / "teacher_answers.jsonl"
    rows = read_jsonl(data_dir / "stage1.jsonl", "stage1")
    cfg = TrainConfig.from_dict(json.loads((run / "run.json").read_text())["stages"]["stage1"]["train"])
    assert cfg.targets == "teacher"
    read = sorted(rows_read(len(rows), cfg))
    assert len(read) == 4 < len(rows)  # 2 steps x 2 rows: only these are asked
    asked = [(q, rows[i].docs) for i in read if rows[i].data_type == "qa" for q in rows[i].questions]
    lines = _lines(cache)
    assert all(r["answer"] for r in lines)
    assert asked and sorted(r["question"] for r in lines) == sorted(q for q, _ in asked)
    assert len({r["key"] for r in lines}) == len(lines)
    before = cache.read_bytes()

    # stage2 starts from stage1's final: the same base, so its teacher hits the cache and generates nothing
    model = ClaraModel.from_pretrained(run / "stage1" / "final")
    calls = _count_generate(model)
    trained = distill_targets(model, get_stage("stage1"), rows, cfg, cache)
    assert calls == [] and cache.read_bytes() == before
    answers = {r["question"]: r["answer"] for r in lines}
    for i, (row, new) in enumerate(zip(rows, trained, strict=True)):
        if i in read and row.data_type == "qa":
            assert new.answers == tuple(answers[q] for q in row.questions) != row.answers
        else:
            assert new == row  # unread rows and paraphrase rows keep their targets
    changed = next(new for i, new in enumerate(trained) if new != rows[i])
    labels = get_stage("stage1").collator(model)([changed])["dec"]["labels"][0]  # what the decoder is scored on
    target = model.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert all(f"Answer: {a}" in target for a in changed.answers)
    with pytest.raises(RunError, match="targets"):  # a result setting: the run keeps what it trained with
        train(run, "stage1", model_options={}, train_options={"targets": "gold"})


def test_an_interrupted_teacher_pass_keeps_its_answers_and_a_rerun_generates_only_the_rest(tmp_path, talking_base):
    model = _model(talking_base)
    questions = [(f"Where does person {i} live?", (f"Person {i} lives in Town {i}.",)) for i in range(6)]
    path = tmp_path / "teacher_answers.jsonl"

    def stop_once_written(_module, _args):  # Ctrl-C at the first forward after a batch reached the file
        if path.is_file():
            raise KeyboardInterrupt

    hook = model.causal_lm.register_forward_pre_hook(stop_once_written)
    with pytest.raises(KeyboardInterrupt):
        teacher_answers(model, questions, TeacherCache(path), max_new_tokens=3, batch_size=2)
    hook.remove()
    kept = path.read_bytes()
    assert len(_lines(path)) == 2

    calls = _count_generate(model)
    resumed = teacher_answers(model, questions, TeacherCache(path), max_new_tokens=3, batch_size=2)
    assert calls == [2, 2] and path.read_bytes().startswith(kept) and len(_lines(path)) == 6
    whole = teacher_answers(_model(talking_base), questions, TeacherCache(tmp_path / "other.jsonl"), max_new_tokens=3,
                            batch_size=2)
    assert resumed == whole  # the same answers as an uninterrupted pass

    done = path.read_bytes()
    with open(path, "ab") as f:  # a write torn by a crash: half a line
        f.write(b'{"answer": "Town')
    assert len(TeacherCache(path)) == 6 and path.read_bytes() == done
    assert teacher_answers(model, questions, TeacherCache(path), max_new_tokens=3) == resumed and calls == [2, 2]
    assert teacher_answers(model, questions[:1], TeacherCache(path), max_new_tokens=4) and calls == [2, 2, 1]


def test_both_trains_every_read_row_twice_and_qa_rows_keep_their_gold_answers_behind_the_teachers(tmp_path,
                                                                                                   talking_base):
    model = _model(talking_base)
    rows = [QAExample(f"Where does person {i} live?", (f"Person {i} lives in Town {i}.", "Noise."), (f"Town {i}",),
                      (0,)) for i in range(3)]
    cfg = TrainConfig(max_steps=3, micro_batch_size=2, targets="both", teacher_max_new_tokens=3)
    out = distill_targets(model, get_stage("stage2"), rows, cfg, tmp_path / "t.jsonl")
    assert out[:3] == rows and len(out) == 6  # the gold copies first, then the teacher's
    read = rows_read(6, cfg)
    answers = {r["question"]: r["answer"] for r in _lines(tmp_path / "t.jsonl")}
    for i, (row, new) in enumerate(zip(rows, out[3:], strict=True)):
        if i + 3 in read:
            assert new.answers == (answers[row.question], row.answer) and new.docs == row.docs
        else:
            assert new == row
    assert len(answers) == len([i for i in read if i >= 3])


def test_the_teacher_reads_what_the_students_prompt_holds_and_skips_paraphrase_rows(tmp_path):
    row = QAExample("q", ("a", "b", "gold"), ("x",), (2,))
    assert teacher_docs(row, 3) == ("a", "b", "gold")  # stage2 reads every document, in order
    assert teacher_docs(row, 1) == ("gold",)  # stage3 reads its top-k; the oracle puts the gold one first
    model = tiny_model()
    calls = _count_generate(model)
    paraphrase = Stage1Example("paraphrase", (), ("restated",), ("doc",))
    cfg = TrainConfig(max_steps=1, micro_batch_size=1, targets="teacher")
    assert distill_targets(model, get_stage("stage1"), [paraphrase], cfg, tmp_path / "t.jsonl") == [paraphrase]
    assert calls == [] and not (tmp_path / "t.jsonl").exists()


def test_targets_are_a_validated_setting_and_the_distill_recipe_sets_them():
    with pytest.raises(ValueError, match=r"targets \(--targets\) must be one of"):
        TrainConfig(targets="silver")
    with pytest.raises(ValueError, match="teacher_cut"):
        TrainConfig(teacher_cut="word")
    recipe = load_recipe("real_text_distill")
    plain = load_recipe("real_text")
    assert recipe.model == plain.model
    assert recipe.train_options("stage2")["targets"] == "teacher"
    assert {k: v for k, v in recipe.train_options("stage1").items() if not k.startswith(("target", "teacher"))} \
        == plain.train_options("stage1")
    assert cut_answer("Jake Phelps is the editor. He skates.", "sentence") == "Jake Phelps is the editor."
    assert cut_answer("Line one\nline two", "sentence") == "Line one"
    assert cut_answer("No end", "sentence") == cut_answer("No end", "none") == "No end"
