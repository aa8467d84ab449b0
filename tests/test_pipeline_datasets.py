"""``data convert --dataset``: local dataset folders shaped like the published ones, through the datasets library;
other people's single files (seed 001, instruction data) converted to rows valid for every stage."""

from __future__ import annotations

import json
import logging

import pytest
from test_pipeline_convert import NAMES, hotpot, nq_hf
from test_pipeline_support import TOPICS

from clara_lite.cli import main
from clara_lite.model.data import read_jsonl, validate_file
from clara_lite.pipeline.convert import convert
from clara_lite.pipeline.sources import detect_format, load_records

STAGES = {"stage1": "stage1", "stage2": "stage2", "stage3": "stage3", "heldout": "stage3"}


@pytest.fixture(autouse=True)
def local_datasets(tmp_path, monkeypatch):
    """The datasets library's cache in the test folder, and no Hub look-ups."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def sentences(topic: str) -> list[str]:
    return [s.rstrip(".") + ". " for s in TOPICS[topic].split(". ")]


def pubmedqa_labeled() -> list[dict]:  # qiaojin/PubMedQA, config pqa_labeled
    return [{"pubid": 21645374 + n, "question": f"Does the {t} abstract report a measurement?",
             "context": {"contexts": sentences(t), "labels": ["BACKGROUND"] * len(sentences(t)),
                         "meshes": ["Humans"], "reasoning_required_pred": ["yes"], "reasoning_free_pred": ["yes"]},
             "long_answer": f"The {t} abstract reports {TOPICS[t].split()[-2]} {TOPICS[t].split()[-1]}",
             "final_decision": ["yes", "no", "maybe"][n % 3]} for n, t in enumerate(NAMES)]


def medqa() -> list[dict]:  # GBaker/MedQA-USMLE-4-options (and the jind11/MedQA JSONL files)
    rows = []
    for n, t in enumerate(NAMES):
        options = {k: NAMES[(n + i) % 8].title() for i, k in enumerate("ABCD")}
        rows.append({"question": f"A 23-year-old asks about the topic that mentions '{TOPICS[t].split()[1]}'. "
                                 "Which topic is it?", "answer": t.title(), "options": options,
                     "meta_info": "step1", "answer_idx": "A", "metamap_phrases": ["23 year old"]})
    return rows


def musique() -> list[dict]:  # musique_ans_v1.0_*.jsonl; the "full" version adds unanswerable questions
    rows = []
    for n in range(8):
        a, b = NAMES[n // 2 * 2], NAMES[n // 2 * 2 + 1]
        paragraphs = [{"idx": i, "title": t, "paragraph_text": TOPICS[t], "is_supporting": t in (a, b)}
                      for i, t in enumerate([a, NAMES[(n + 3) % 8], b, NAMES[(n + 5) % 8]]) if t not in ()]
        rows.append({"id": f"2hop__{n}", "paragraphs": paragraphs, "question": f"What joins {a} and {b} ({n % 2})?",
                     "question_decomposition": [{"id": 1, "question": f"about {a}", "answer": a,
                                                 "paragraph_support_idx": 0}],
                     "answer": f"{a} and {b}", "answer_aliases": [f"{b} and {a}"], "answerable": True})
    rows.append({**rows[0], "id": "2hop__x", "answerable": False})  # skipped
    return rows


def two_wiki() -> list[dict]:  # the official dev.json: HotpotQA's layout, plus evidences
    return [{"_id": f"w{r['id']}", "type": "compositional", "question": r["question"],
             "context": r["context"], "supporting_facts": r["supporting_facts"],
             "evidences": [[r["answer"].split("-")[0], "linked to", r["answer"].split("-")[1]]], "answer": r["answer"]}
            for r in hotpot(hf_layout=False)]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def saved(folder, rows):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(folder))
    return folder


def parquet(folder, splits: dict[str, list[dict]]):
    from datasets import Dataset

    folder.mkdir(parents=True)
    for split, rows in splits.items():
        Dataset.from_list(rows).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder


# name: (make the folder, --dataset extra args, format told from the fields, questions)
DATASETS = {
    "pubmedqa-saved": (lambda d: saved(d / "pubmedqa", pubmedqa_labeled()), [], "pubmedqa", 8),
    "pubmedqa-parquet": (lambda d: parquet(d / "pqa_labeled", {"train": pubmedqa_labeled()}), [], "pubmedqa", 8),
    "pubmedqa-original": (lambda d: ((d / "pubmedqa").mkdir(), (d / "pubmedqa" / "ori_pqal.json").write_text(
        json.dumps({str(r["pubid"]): {"QUESTION": r["question"], "CONTEXTS": r["context"]["contexts"],
                                      "LABELS": r["context"]["labels"], "MESHES": r["context"]["meshes"],
                                      "YEAR": "2011", "reasoning_required_pred": "yes", "reasoning_free_pred": "yes",
                                      "final_decision": r["final_decision"], "LONG_ANSWER": r["long_answer"]}
                    for r in pubmedqa_labeled()})), d / "pubmedqa")[-1],
                          [], "pubmedqa", 8),  # the GitHub release: {pubid: record}, read as plain JSON
    "medqa-jsonl": (lambda d: (write_jsonl(d / "medqa" / "train.jsonl", medqa()[:2]),
                               write_jsonl(d / "medqa" / "test.jsonl", medqa()), d / "medqa")[-1],
                    ["--split", "test"], "medqa", 8),
    "musique-jsonl": (lambda d: (write_jsonl(d / "musique" / "musique_full_v1.0_train.jsonl", musique()),
                                 d / "musique")[-1], [], "musique", 8),
    "2wiki-json": (lambda d: ((d / "2wiki").mkdir(), (d / "2wiki" / "dev.json").write_text(json.dumps(two_wiki())),
                              d / "2wiki")[-1], [], "2wiki", 8),
    "nq-parquet": (lambda d: parquet(d / "natural_questions", {"validation": nq_hf()}), ["--split", "validation"],
                   "nq", 8),
    "hotpotqa-parquet": (lambda d: parquet(d / "hotpot_qa", {"train": hotpot(True)}), [], "hotpotqa", 8),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_folders_convert_to_files_valid_for_every_stage(name, tmp_path, capsys):
    make, extra, fmt, n_questions = DATASETS[name]
    folder = make(tmp_path)
    out = tmp_path / "out"
    assert main(["data", "convert", "--dataset", str(folder), *extra, "--out-dir", str(out), "--k", "3",
                 "--heldout", "0.25", "--strategy", "random"]) == 0
    printed = capsys.readouterr().out
    assert f"records, format {fmt}" in printed and f'"questions": {n_questions}' in printed
    for file, stage in STAGES.items():
        report = validate_file(out / f"{file}.jsonl", stage, top_k=None if stage == "stage1" else 3)
        assert report.ok and report.n_rows, report.format()


def test_musique_uses_its_paragraphs_and_skips_unanswerable_questions():
    corpus = convert(musique(), "musique")  # was: KeyError 'context' through the HotpotQA converter
    item = corpus.items[0]
    assert len(corpus.items) == 8 and item.answers == ("volcanoes and bees", "bees and volcanoes")
    assert [corpus.docs[d].split(":")[0] for d in item.positives] == ["volcanoes", "bees"]
    assert len(item.negatives) == 2


def test_pubmedqa_gold_answer_is_the_decision_or_the_long_answer(tmp_path):
    rows = pubmedqa_labeled()
    decision, long = convert(rows, "pubmedqa"), convert(rows, "pubmedqa", answer="long")
    assert decision.items[0].answers == ("yes",) and decision.items[0].explanation.startswith("The volcanoes")
    assert long.items[0].answers == (rows[0]["long_answer"],) and long.items[0].explanation is None
    folder = saved(tmp_path / "pubmedqa", rows)
    assert main(["data", "convert", "--dataset", str(folder), "--long-answer", "--out-dir", str(tmp_path / "o"),
                 "--k", "3", "--heldout", "0"]) == 0
    gold = {r.question: r.answer for r in read_jsonl(tmp_path / "o" / "stage2.jsonl", "stage2")}
    assert gold[rows[1]["question"]] == rows[1]["long_answer"]


def test_medqa_options_are_the_document_and_the_answer_is_an_option():
    corpus = convert(medqa(), "medqa")
    item = corpus.items[0]
    assert item.answers == ("Volcanoes",) and corpus.docs[item.positives[0]].startswith("Options: (A) Volcanoes (B) Bees")
    hf_layout = [{**medqa()[0], "options": [{"key": "A", "value": "Volcanoes"}, {"key": "B", "value": "Bees"}]}]
    assert convert(hf_layout, "medqa").items[0].answers == ("Volcanoes",)  # bigbio's [{key, value}]


def test_limit_split_and_a_missing_split(tmp_path):
    folder = parquet(tmp_path / "medqa", {"train": medqa(), "test": medqa()[:3]})
    records, description = load_records(folder, split="test", progress=False)
    assert len(records) == 3 and "folder" in description
    assert len(load_records(folder, limit=5, progress=False)[0]) == 5
    with pytest.raises(ValueError, match="has no split 'dev'; it has train, test"):
        load_records(folder, split="dev")
    with pytest.raises(FileNotFoundError, match="dataset not found: ./nowhere"):
        load_records("./nowhere")


@pytest.mark.parametrize("record, fmt", [
    (pubmedqa_labeled()[0], "pubmedqa"), (medqa()[0], "medqa"), (musique()[0], "musique"), (two_wiki()[0], "2wiki"),
    (hotpot(True)[0], "hotpotqa"), (nq_hf()[0], "nq"),
    ({"question": "q", "docs": ["d"], "gold_answer": "a"}, "seed001"),
    ({"instruction": "i", "input": "", "output": "o"}, "instruction"),
])
def test_the_format_is_told_from_the_fields(record, fmt):
    assert detect_format(record) == fmt
    with pytest.raises(ValueError, match="cannot tell the dataset format from its fields \\(a, b\\)"):
        detect_format({"a": 1, "b": 2})


# --------------------------------------------------------------------------- other people's files


def seed001_rows() -> list[dict]:
    """Seed 001's one file for every stage: a question, its documents and the gold answer; no stage1 fields."""
    return [{"question": f"What does the {t} text say first?", "docs": [TOPICS[t], TOPICS[NAMES[(n + 1) % 8]]],
             "gold_answer": TOPICS[t].split(". ")[0], **({"pos_index": [0]} if n % 2 else {})}
            for n, t in enumerate(NAMES)]


def instruction_rows() -> list[dict]:
    rows = [{"instruction": f"Summarise the first fact of the {t} text.", "input": TOPICS[t],
             "output": TOPICS[t].split(". ")[0]} for t in NAMES]
    return rows + [{"instruction": "Write a poem.", "input": "", "output": "Roses..."}]  # no document: skipped


@pytest.mark.parametrize("fmt, rows", [("seed001", seed001_rows), ("instruction", instruction_rows)])
def test_foreign_files_are_recognised_by_validate_and_convert_to_every_stage(fmt, rows, tmp_path, capsys):
    source = tmp_path / f"{fmt}.jsonl"
    write_jsonl(source, rows())
    assert main(["data", "validate", str(source), "--stage", "stage1"]) == 1
    printed = capsys.readouterr().out
    assert f"`clara-lite data convert --format {fmt} --input {source} --out-dir DIR`" in printed
    out = tmp_path / "out"
    assert main(["data", "convert", "--input", str(source), "--out-dir", str(out), "--k", "3", "--heldout", "0.25"]) == 0
    assert f"format {fmt}" in capsys.readouterr().out  # told from the fields
    for file, stage in STAGES.items():
        report = validate_file(out / f"{file}.jsonl", stage, top_k=None if stage == "stage1" else 3)
        assert report.ok and report.n_rows, report.format()
    questions = {r.question: r for r in read_jsonl(out / "stage2.jsonl", "stage2") + read_jsonl(out / "heldout.jsonl",
                                                                                                   "stage3")}
    assert len(questions) == 8
    first = rows()[0]
    row = questions[first.get("question") or first["instruction"]]
    assert row.answer == (first.get("gold_answer") or first["output"])
    assert TOPICS["volcanoes"] in [row.docs[i] for i in row.pos_index]


def test_seed001_pos_index_marks_the_positives_and_the_rest_are_negatives():
    corpus = convert(seed001_rows(), "seed001")
    with_pos, without = corpus.items[1], corpus.items[0]
    assert [corpus.docs[d] for d in with_pos.positives] == [TOPICS["bees"]] and len(with_pos.negatives) == 1
    assert len(without.positives) == 2 and not without.negatives  # no pos_index: every doc is needed


def test_instruction_rows_without_input_become_documents_to_synthesize_from(tmp_path, capsys):
    """Seed 002's {"instruction", "output"} rows: no document to answer from, so no question rows of their own;
    their outputs are written as documents and the next command is printed."""
    source = tmp_path / "seed002.jsonl"
    outputs = [TOPICS[t] for t in NAMES[:3]]
    write_jsonl(source, [{"instruction": f"Tell me about {t}.", "output": text} for t, text in zip(NAMES[:3], outputs, strict=True)])
    out = tmp_path / "out"
    assert main(["data", "convert", "--input", str(source), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    folder = out / "instruction_documents"
    assert f"clara-lite data build --input {folder} --out {out / 'from_outputs'}" in printed
    assert [p.read_text().strip() for p in sorted(folder.glob("*.txt"))] == outputs
    assert not (out / "stage2.jsonl").exists()  # no copy-the-answer rows


def test_legacy_image_markers_are_named_by_validate_and_dropped_by_convert(tmp_path, capsys):
    rows = seed001_rows()
    rows[0]["docs"][0] = "[IMAGE_REF: figures/volcano.png] " + rows[0]["docs"][0]
    source = tmp_path / "seed001.jsonl"
    write_jsonl(source, rows)
    assert main(["data", "validate", str(source), "--stage", "stage2"]) == 1
    assert f"{source}:1: field 'docs[0]'" in capsys.readouterr().out  # the line and field, with the fix
    out = tmp_path / "out"
    assert main(["data", "convert", "--input", str(source), "--out-dir", str(out), "--k", "3"]) == 0
    text = "".join((out / f"{name}.jsonl").read_text() for name in ("stage1", "stage2", "stage3", "heldout"))
    assert "IMAGE_REF" not in text and TOPICS[NAMES[0]] in text
    assert main(["data", "validate", str(out / "stage2.jsonl"), "--stage", "stage2"]) == 0


def test_train_on_a_raw_seed001_file_gives_the_convert_command_validate_gives(tmp_path, caplog):
    source = tmp_path / "seed001.jsonl"
    write_jsonl(source, seed001_rows())
    with caplog.at_level(logging.ERROR, logger="clara_lite"):
        code = main(["train", "--stage", "stage1", "--run-dir", str(tmp_path / "run"), "--data", str(source),
                     "--base", "tiny-random"])
    assert code == 2
    assert f"`clara-lite data convert --format seed001 --input {source} --out-dir DIR`" in caplog.text
