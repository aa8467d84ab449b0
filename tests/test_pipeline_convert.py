"""Public QA datasets -> stage files, on small records shaped like each dataset; splits by document."""

from __future__ import annotations

import json

import pytest
from test_pipeline_support import TOPICS

from clara_lite.cli import main
from clara_lite.model.data import read_jsonl, validate_file
from clara_lite.pipeline.convert import convert, load_records
from clara_lite.pipeline.split import split_units, write_stage_files

NAMES = list(TOPICS)


def squad_flat() -> list[dict]:
    rows = []
    for n, (title, text) in enumerate(TOPICS.items()):
        first = text.split()[0]
        rows.append({"id": f"s{n}a", "title": title, "context": text, "question": f"Which word opens the {title} text?",
                     "answers": {"text": [first, first.lower()], "answer_start": [0, 0]}})
        rows.append({"id": f"s{n}b", "title": title, "context": text, "question": f"Is the {title} text long?",
                     "answers": {"text": [], "answer_start": []}})  # SQuAD v2 unanswerable
    return rows


def squad_nested() -> dict:
    return {"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": text, "qas": [
            {"id": f"q{n}", "question": f"What is the {title} paragraph about?",
             "answers": [{"text": title, "answer_start": 0}]},
            {"id": f"q{n}x", "question": "Unanswerable?", "answers": [], "is_impossible": True}]}]}
        for n, (title, text) in enumerate(TOPICS.items())]}


def hotpot(hf_layout: bool) -> list[dict]:
    rows = []
    for n in range(len(NAMES)):  # two questions per pair of titles: four pairs
        p = n // 2 * 2
        a, b = NAMES[p], NAMES[p + 1]
        distractors = [NAMES[(p + 2) % len(NAMES)], NAMES[(p + 5) % len(NAMES)]]
        titles = [a, *distractors, b]
        sentences = [[s + " " for s in TOPICS[t].split(". ")] for t in titles]
        context = {"title": titles, "sentences": sentences} if hf_layout else [[t, s] for t, s in zip(titles, sentences, strict=True)]
        facts = {"title": [a, b], "sent_id": [0, 0]} if hf_layout else [[a, 0], [b, 0]]
        rows.append({"id": f"h{n}", "question": f"What links {a} and {b} ({n % 2})?", "answer": f"{a}-{b}", "type": "bridge",
                     "level": "easy", "supporting_facts": facts, "context": context})
    return rows


def pubmedqa() -> dict:
    return {str(1000 + n): {"QUESTION": f"Does the {t} abstract mention a year?",
                            "CONTEXTS": [], "context": {"contexts": TOPICS[t].split(". "), "labels": ["BACKGROUND"],
                                                        "meshes": []},
                            "question": f"Does the {t} abstract mention a year?",
                            "long_answer": f"Yes: the {t} abstract names one.", "final_decision": "yes"}
            for n, t in enumerate(NAMES)}


def nq_dpr() -> list[dict]:
    return [{"dataset": "nq", "question": f"who is named in the {t} passage", "answers": [TOPICS[t].split()[0]],
             "positive_ctxs": [{"title": t, "text": TOPICS[t], "score": 1, "passage_id": str(n)}],
             "negative_ctxs": [], "hard_negative_ctxs": [{"title": NAMES[(n + 2) % 8], "text": TOPICS[NAMES[(n + 2) % 8]]}]}
            for n, t in enumerate(NAMES)]


def nq_simplified() -> list[dict]:
    rows = []
    for n, t in enumerate(NAMES):
        tokens = ["<H1>", t.title(), "</H1>", "<P>", *TOPICS[t].split(), "</P>"]
        rows.append({"example_id": n, "document_url": f"https://en.wikipedia.org/wiki/{t}", "question_text": f"what about {t}",
                     "document_text": " ".join(tokens),
                     "annotations": [{"yes_no_answer": "NONE", "long_answer": {"start_token": 3, "end_token": len(tokens),
                                                                               "candidate_index": 0},
                                      "short_answers": [{"start_token": 4, "end_token": 6}]}],
                     "long_answer_candidates": [{"start_token": 3, "end_token": len(tokens), "top_level": True}]})
    rows.append({**rows[0], "example_id": 99, "annotations": [{"yes_no_answer": "NONE", "short_answers": [],
                 "long_answer": {"start_token": -1, "end_token": -1, "candidate_index": -1}}]})  # no answer: skipped
    return rows


def nq_hf() -> list[dict]:
    rows = []
    for n, t in enumerate(NAMES):
        tokens = ["<P>", *TOPICS[t].split(), "</P>"]
        rows.append({"id": str(n), "document": {"title": t, "url": f"https://en.wikipedia.org/wiki/{t}", "html": "",
                                                "tokens": {"token": tokens, "is_html": [w in ("<P>", "</P>") for w in tokens]}},
                     "question": {"text": f"what about {t}", "tokens": ["what", "about", t]},
                     "annotations": {"id": ["a"], "long_answer": [{"start_token": 0, "end_token": len(tokens),
                                                                   "candidate_index": 0}],
                                     "short_answers": [{"start_token": [1], "end_token": [3],
                                                        "text": [" ".join(tokens[1:3])]}],
                                     "yes_no_answer": [-1]}})
    return rows


CASES = {
    "squad-flat": ("squad", squad_flat, 8),
    "squad-nested": ("squad", squad_nested, 8),
    "hotpotqa-hf": ("hotpotqa", lambda: hotpot(True), 8),
    "hotpotqa-json": ("hotpotqa", lambda: hotpot(False), 8),
    "pubmedqa": ("pubmedqa", pubmedqa, 8),
    "nq-dpr": ("nq", nq_dpr, 8),
    "nq-simplified": ("nq", nq_simplified, 8),
    "nq-hf": ("nq", nq_hf, 8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dataset_converts_to_valid_stage_files_split_by_document(case, tmp_path):
    fmt, make, n_questions = CASES[case]
    source = tmp_path / "dataset.json"
    records = make()
    source.write_text(json.dumps(records) if not case.endswith(("flat", "dpr", "simplified", "-hf")) else
                      "\n".join(json.dumps(r) for r in records) + "\n")
    corpus = convert(load_records(source), fmt)
    assert len(corpus.items) == n_questions
    paths, stats = write_stage_files(corpus, tmp_path / "out", k=4, heldout=0.25, seed=1)
    for name, path in paths.items():
        stage = "stage1" if name == "stage1" else "stage3"
        report = validate_file(path, stage, top_k=None if stage == "stage1" else 4)
        assert report.ok, report.format()
    assert stats["heldout_questions"] > 0 and stats["train_questions"] > 0
    # evaluation never sees a training document: no held-out positive appears in any training file
    train_text = "".join((tmp_path / "out" / f"{n}.jsonl").read_text() for n in ("stage1", "stage2", "stage3"))
    for row in read_jsonl(paths["heldout"], "stage3"):
        for i in row.pos_index:
            assert json.dumps(row.docs[i])[1:-1] not in train_text


def test_dataset_specific_fields_are_used():
    squad = convert(squad_flat(), "squad")
    assert squad.items[0].answers == ("Mount", "mount")  # every acceptable answer
    hot = convert(hotpot(True), "hotpotqa")
    item = hot.items[0]
    assert len(item.positives) == 2 and len(item.negatives) == 2 and hot.docs[item.positives[0]].startswith("volcanoes: ")
    pub = convert([{"pubid": "1", **pubmedqa()["1000"]}], "pubmedqa")
    assert pub.items[0].answers == ("yes",) and pub.items[0].explanation.startswith("Yes: the volcanoes")
    for records in (nq_simplified(), nq_hf()):
        nq = convert(records, "nq")
        assert nq.items[0].answers == ("Mount Etna",) and "<P>" not in nq.docs[nq.items[0].positives[0]]


def test_records_from_a_datasets_dataset(tmp_path):
    from datasets import Dataset

    dataset = Dataset.from_list([r for r in squad_flat() if r["answers"]["text"]])  # what load_dataset returns
    paths, stats = write_stage_files(convert(dataset, "squad"), tmp_path, k=3, heldout=0.25)
    assert stats["questions"] == 8 and validate_file(paths["stage3"], "stage3", top_k=3).ok


def test_multi_document_questions_keep_their_documents_together(tmp_path):
    corpus = convert(hotpot(False), "hotpotqa")  # each question needs two titles
    train, held = split_units(corpus, heldout=0.25)
    for item in corpus.items:
        assert all(d in train for d in item.positives) or all(d in held for d in item.positives)
    rows = write_stage_files(corpus, tmp_path, k=4, heldout=0.0)[0]
    stage1 = read_jsonl(rows["stage1"], "stage1")
    assert {len(r.docs) for r in stage1} == {2}  # uniform doc counts for batching


def test_split_is_stable_when_documents_are_added():
    small = convert(squad_flat()[:8], "squad")
    big = convert(squad_flat(), "squad")
    _, held_small = split_units(small, 0.5, seed=0)
    _, held_big = split_units(big, 0.5, seed=0)
    assert held_small and len(held_small & held_big) >= len(held_small) - 1


def test_cli_convert(tmp_path, capsys):
    source = tmp_path / "pubmedqa.json"
    source.write_text(json.dumps(pubmedqa()))
    assert main(["data", "convert", "--format", "pubmedqa", "--input", str(source), "--out-dir", str(tmp_path / "o"),
                 "--k", "3", "--strategy", "random", "--heldout", "0.25"]) == 0
    out = capsys.readouterr().out
    assert '"heldout_questions": 2' in out
    assert validate_file(tmp_path / "o" / "stage2.jsonl", "stage2", top_k=3).ok
