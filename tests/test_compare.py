"""Closed-book, text RAG and CLaRa on the same questions: the report files, the settings, the readers."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_model
from synthetic_data import write_run_data
from test_pipeline_convert import hotpot
from test_pipeline_datasets import musique, two_wiki

from clara_lite import notebook as nb
from clara_lite.cli import main
from clara_lite.model import inputs
from clara_lite.model.data import read_jsonl
from clara_lite.pipeline.questions import load_questions, pool_retriever
from clara_lite.serve.compare import CLARA, CLARA_ZEROED, CLOSED_BOOK, TEXT_RAG, compare, reading_sets
from clara_lite.serve.paper import paper_scores

CONFIG = dict(doc_max_length=16, compr_rate=4, generation_top_k=2, lora_r=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_run_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "model"
    tiny_model(**CONFIG).save_pretrained(folder)
    return folder


def test_three_systems_on_one_file_write_table_json_and_chart(saved, data, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "--model", str(saved), "--data", str(data / "stage2.jsonl"), "--systems",
                 "closed-book,text-rag,clara", "--report-dir", str(out), "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "comparison.json").read_text())
    assert report["setting"] == "oracle" and report["top_k"] == 2 and report["count"] == 12
    assert [s["system"] for s in report["systems"]] == [CLOSED_BOOK, TEXT_RAG, CLARA]
    systems = {s["system"]: s for s in report["systems"]}
    for scores in systems.values():
        assert scores["count"] == 12 and 0 <= scores["f1"] <= 1 and scores["seconds_per_question"] > 0
    # closed-book reads nothing, text RAG two documents' text, CLaRa two documents' memory slots
    rows = read_jsonl(data / "stage2.jsonl", "stage2")
    model = tiny_model(**CONFIG)
    gold_first = [[r.docs[r.pos_index[0]], *[d for i, d in enumerate(r.docs) if i != r.pos_index[0]][:1]] for r in rows]
    expected = {
        CLOSED_BOOK: [inputs.text_answer_prompt(model.tokenizer, r.question)[0] for r in rows],
        TEXT_RAG: [inputs.text_answer_prompt(model.tokenizer, r.question, d)[0] for r, d in zip(rows, gold_first, strict=True)],
        CLARA: [inputs.answer_prompt(model.tokenizer, model.tokens, r.question, 2)[0] for r in rows],
    }
    for name, lengths in expected.items():
        assert systems[name]["prompt_tokens"] == pytest.approx(sum(lengths) / len(lengths))
    assert systems[CLOSED_BOOK]["prompt_tokens"] < systems[TEXT_RAG]["prompt_tokens"]
    table = (out / "comparison.md").read_text()
    assert "| system | EM | F1 | cover-EM | Recall@2 |" in table and table in printed + "\n"
    assert sum(line.startswith(("| closed-book", "| text-rag", "| clara")) for line in table.splitlines()) == 3
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    answers = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(answers) == 12 and answers[0]["question"] == rows[0].question
    assert answers[0][TEXT_RAG]["read"] == gold_first[0] and answers[0][CLOSED_BOOK]["read"] == []


def test_text_systems_run_the_base_model_with_no_adapter_active(data):
    rows = read_jsonl(data / "stage2.jsonl", "stage2")[:6]
    model = tiny_model(**CONFIG)
    before = compare(model, rows, [TEXT_RAG, CLOSED_BOOK, CLARA], max_new_tokens=6)
    with torch.no_grad():  # adapters that change every output a lot
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    after = compare(model, rows, [TEXT_RAG, CLOSED_BOOK, CLARA], max_new_tokens=6)
    assert after.predictions[TEXT_RAG] == before.predictions[TEXT_RAG]
    assert after.predictions[CLOSED_BOOK] == before.predictions[CLOSED_BOOK]
    assert after.predictions[CLARA] != before.predictions[CLARA]


def test_normal_setting_retrieves_from_the_pool_and_scores_recall(data):
    rows = read_jsonl(data / "stage2.jsonl", "stage2")
    pool = list(dict.fromkeys(d for r in rows for d in r.docs))
    read = reading_sets(rows, "normal", 1, pool_retriever(pool), pool)
    # "Where does Ada live?" shares only the name with "Ada lives in Paris.": BM25 finds each gold document
    assert read == [[r.docs[r.pos_index[0]]] for r in rows]
    result = compare(tiny_model(**CONFIG), rows, [TEXT_RAG, CLARA, CLARA_ZEROED], setting="normal", top_k=1,
                     retriever=lambda questions, k: [[0]] * len(questions), pool=pool, max_new_tokens=2)
    gold_is_first = sum(pool[0] == r.docs[r.pos_index[0]] for r in rows) / len(rows)
    for name in (TEXT_RAG, CLARA, CLARA_ZEROED):
        assert result.scores[name]["recall_at_k"] == pytest.approx(gold_is_first)
    assert result.read[CLARA] == [[pool[0]]] * len(rows)


def test_oracle_reads_gold_first_and_a_retriever_model_chooses_among_all_candidates(data):
    rows = read_jsonl(data / "stage3.jsonl", "stage3")[:4]
    model = tiny_model(**CONFIG)
    model.add_query_reasoner()
    result = compare(model, rows, [TEXT_RAG, CLARA], top_k=2, max_new_tokens=2)
    assert all(read[0] == r.docs[r.pos_index[0]] for read, r in zip(result.read[TEXT_RAG], rows, strict=True))
    _, picked = model.generate_from_questions([r.question for r in rows], [list(r.docs) for r in rows], 2, top_k=2)
    assert result.read[CLARA] == [[r.docs[j] for j in idx] for r, idx in zip(rows, picked.tolist(), strict=True)]
    assert result.scores[TEXT_RAG]["recall_at_k"] is None  # nothing was retrieved: gold was given
    assert 0 <= result.scores[CLARA]["recall_at_k"] <= 1


def test_unknown_system_and_missing_retriever_are_clear_errors(data):
    rows = read_jsonl(data / "stage2.jsonl", "stage2")
    with pytest.raises(ValueError, match="unknown system.*'bm25'.*choose from closed-book"):
        compare(None, rows, ["clara", "bm25"])
    with pytest.raises(ValueError, match="normal setting retrieves from a pool"):
        reading_sets(rows, "normal", 2)


@pytest.mark.parametrize("name, records, fmt, n_docs", [
    ("hotpot.json", hotpot(hf_layout=False), None, 4),
    ("musique.jsonl", musique(), None, None),
    ("dev.json", two_wiki(), None, None),
])
def test_benchmark_files_are_read_with_gold_documents_first(tmp_path, name, records, fmt, n_docs):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    rows = load_questions(path, limit=5)
    assert 0 < len(rows) <= 5
    for row in rows:
        assert row.pos_index and list(row.pos_index) == list(range(len(row.pos_index)))
        assert n_docs is None or len(row.docs) == n_docs
        assert all(isinstance(d, str) and d for d in row.docs)


def test_stage1_rows_become_one_question_per_pair(tmp_path, shared_dir):
    rows = load_questions(shared_dir / "data" / "upstream_pretrain_data.jsonl")
    first = json.loads((shared_dir / "data" / "upstream_pretrain_data.jsonl").open().readline())
    assert len(rows) == 7861  # every QA pair of the 1,000 rows
    assert [r.question for r in rows[: len(first["question"])]] == first["question"]
    assert rows[0].docs == tuple(first["docs"]) and rows[0].answers == (first["answers"][0],)
    assert rows[0].pos_index == (0,)


def test_paper_scores_match_the_upstream_tables():
    assert paper_scores("mistralai/Mistral-7B-Instruct-v0.2", 16, "normal", "nq_eval_no_pos.jsonl") == {
        TEXT_RAG: 54.58, CLARA: 55.56}
    assert paper_scores("mistral-7b", 32, "oracle", "musique") == {TEXT_RAG: 45.72, CLARA: 38.31}
    assert paper_scores("mistral-7b", 4, "oracle", "2WikiMultihopQA/dev.json")[CLARA] == 70.48
    assert paper_scores("smollm2-135m", 16, "oracle", "nq") == {}  # the paper has no such model
    assert paper_scores("mistral-7b", 8, "oracle", "nq") == {}  # nor that compression rate
    assert paper_scores("mistral-7b", 16, "oracle", "squad") == {}


def test_notebook_compare_and_benchmark_show_the_table_and_write_the_report(tmp_path, capsys):
    drive = tmp_path / "drive"
    settings = nb.save_settings(drive, nb.Settings(run_name="cmp", base_model="tiny-random", compr_rate=4,
                                                   doc_max_length=16, lora_r=4))
    ws = nb.Workspace(drive, settings)
    ws.prepare_data("example")
    model = tiny_model(**CONFIG)
    result = ws.compare(model, [CLOSED_BOOK, CLARA], limit=6, max_new_tokens=2)
    assert result.count == 6 and list(result.scores) == [CLOSED_BOOK, CLARA]
    report = drive / "runs" / "cmp" / "benchmarks" / "heldout-oracle"
    assert {p.name for p in report.iterdir()} == {"comparison.md", "comparison.json", "comparison.png",
                                                  "predictions.jsonl"}
    hotpot_file = drive / "hotpot_dev_distractor.json"
    hotpot_file.write_text(json.dumps(hotpot(hf_layout=False)))
    model = tiny_model(**{**CONFIG, "compr_rate": 16})  # the paper's compression rate
    model.config.base_model = "mistral-7b"  # as an official CLaRa-7B checkpoint's config names its base
    capsys.readouterr()
    results = ws.benchmark(hotpot_file.name, model=model, limit=4, max_new_tokens=2)
    assert set(results) == {"oracle", "normal"} and results["normal"].scores[CLARA]["recall_at_k"] is not None
    out = capsys.readouterr().out
    assert "paper: apple/ml-clara README" in out
    table = (drive / "runs" / "cmp" / "benchmarks" / "hotpot_dev_distractor-normal" / "comparison.md").read_text()
    assert "| paper |" in table and "| 0.437 |" in table  # CLaRa CR=16 HotpotQA normal: 43.72


def test_eval_paper_prints_the_papers_figure_and_what_differs(tmp_path, saved, capsys):
    data = tmp_path / "hotpot_dev_distractor.json"
    data.write_text(json.dumps(hotpot(hf_layout=False)))
    assert main(["eval", "--model", str(saved), "--data", str(data), "--systems", "clara", "--limit", "3",
                 "--max-new-tokens", "2", "--paper", "--report-dir", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "| paper |" in out and "| 0.738 |" in out  # CLaRa, compression 4, HotpotQA, oracle: 73.81
    assert "the paper's base model is Mistral-7B, this model's is tiny-random" in out
    assert "| 0.738 |" in (tmp_path / "report" / "comparison.md").read_text()
    assert json.loads((tmp_path / "report" / "comparison.json").read_text())["paper"]["clara"] == 73.81
