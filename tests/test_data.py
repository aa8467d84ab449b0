"""Reading and validating upstream CLaRa JSONL files, including every kind of bad line."""

import json
from pathlib import Path

import pytest

from clara_lite.model.data import (
    DataError,
    Problem,
    QAExample,
    Stage1Example,
    read_jsonl,
    validate_file,
)


@pytest.fixture
def upstream(shared_dir) -> Path:
    """The upstream sample in ../shared (missing: fails under CI, skips elsewhere; see conftest)."""
    return shared_dir / "data" / "upstream_pretrain_data.jsonl"


def write_lines(path: Path, lines: list) -> Path:
    """Write rows (dicts become JSON, strings are written verbatim) one per line."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def qa_row(**fields) -> dict:
    row = {"question": "Who?", "docs": ["d0", "d1", "d2"], "gold_answer": "Ann", "pos_index": [1]}
    row.update(fields)
    return {k: v for k, v in row.items() if v is not ...}  # ``...`` drops a field


def problems_by_line(problems: list[Problem]) -> dict[int, list[tuple[str, str]]]:
    found: dict[int, list[tuple[str, str]]] = {}
    for p in problems:
        found.setdefault(p.line, []).append((p.field, p.reason))
    return found


def test_upstream_pretrain_file_loads_as_stage1(upstream):
    examples = read_jsonl(upstream, "stage1")
    assert len(examples) == 1000
    assert all(isinstance(ex, Stage1Example) and ex.data_type == "qa" for ex in examples)
    assert all(len(ex.docs) == 1 for ex in examples)
    assert all(len(ex.questions) == len(ex.answers) >= 1 for ex in examples)
    first = examples[0]
    assert first.answers[0] == "Jake Phelps"
    assert first.docs[0].startswith("This a document about Flip Skateboards.")

    report = validate_file(upstream, "stage1", top_k=1)
    assert report.ok and report.n_bad == 0
    assert report.n_rows == 1000
    assert report.docs_per_row == {1: 1000}
    assert report.data_types == {"qa": 1000}
    assert report.n_questions == 7861
    assert "1000 rows, 0 bad" in report.format()


def test_upstream_file_with_wrong_top_k_is_reported_not_raised(upstream):
    report = validate_file(upstream, "stage1", top_k=2)
    assert report.n_bad == 1000
    assert report.problems[0] == Problem(1, "docs", "1 docs but top_k=2; stage1 needs exactly top_k")


def test_stage1_qa_and_paraphrase(tmp_path):
    path = write_lines(
        tmp_path / "s1.jsonl",
        [
            {"data_type": "qa", "question": ["q1", "q2"], "answers": ["a1", "a2"], "docs": ["doc"]},
            {"data_type": "paraphrase", "answers": ["para"], "docs": ["doc"]},
            {"data_type": "paraphrase", "question": "", "answers": ["para"], "docs": ["doc"]},
            {"data_type": "paraphrase", "question": [], "answers": ["para", "alt"], "context": ["doc"]},
            {"question": ["q"], "answers": ["a"], "docs": ["doc"]},  # data_type defaults to qa
        ],
    )
    examples = read_jsonl(path, "stage1")
    assert examples[0] == Stage1Example("qa", ("q1", "q2"), ("a1", "a2"), ("doc",))
    assert examples[1] == Stage1Example("paraphrase", (), ("para",), ("doc",))
    assert examples[3].answers == ("para", "alt") and examples[3].docs == ("doc",)
    assert examples[4].data_type == "qa"
    assert validate_file(path, "stage1").data_types == {"paraphrase": 3, "qa": 2}


def test_stage1_bad_rows_all_reported(tmp_path):
    path = write_lines(
        tmp_path / "s1.jsonl",
        [
            {"data_type": "qa", "question": ["q1", "q2"], "answers": ["a1"], "docs": ["doc"]},
            {"data_type": "summary", "answers": ["a"], "docs": ["doc"]},
            {"data_type": "paraphrase", "answers": "not a list", "docs": ["doc"]},
            {"data_type": "qa", "question": ["q", ""], "answers": ["a", 3], "docs": []},
        ],
    )
    with pytest.raises(DataError) as info:
        read_jsonl(path, "stage1")
    found = problems_by_line(info.value.problems)
    assert [f for f, _ in found[1]] == ["answers"] and "1 answers for 2 questions" in found[1][0][1]
    assert found[2][0][0] == "data_type"
    assert found[3] == [("answers", "expected a list of strings, got string")]
    assert {f for f, _ in found[4]} == {"docs", "answers", "question"}
    assert "item 1 is number" in dict(found[4])["answers"]


def test_qa_answer_aliases_and_doc_aliases(tmp_path):
    path = write_lines(
        tmp_path / "s2.jsonl",
        [
            qa_row(),
            qa_row(gold_answer=..., answer="Bo"),
            qa_row(gold_answer=..., answers=["Cy", "Cyrus"]),
            qa_row(gold_answer=..., golden_answers=["Di"]),
            qa_row(docs=..., context=["c0", "c1"], pos_index=...),
            qa_row(docs=..., content=["k0"], pos_index=None),
        ],
    )
    examples = read_jsonl(path, "stage2")
    assert examples[0] == QAExample("Who?", ("d0", "d1", "d2"), ("Ann",), (1,))
    assert [ex.answers for ex in examples[1:4]] == [("Bo",), ("Cy", "Cyrus"), ("Di",)]
    assert examples[2].answer == "Cy"  # the training target is the first acceptable answer
    assert examples[4].docs == ("c0", "c1") and examples[4].pos_index == ()
    assert examples[5].docs == ("k0",) and examples[5].pos_index == ()
    assert read_jsonl(path, "stage3") == examples


def test_many_bad_lines_each_reported_with_line_and_field(tmp_path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            qa_row(),  # 1 ok
            '{"question": "Who?", "docs": ["d"],',  # 2 bad JSON
            qa_row(docs=...),  # 3 missing docs
            "",  # 4 blank, skipped
            qa_row(docs=["d0", "  "], pos_index=[0]),  # 5 empty doc string
            qa_row(pos_index=[3]),  # 6 out of range (3 docs)
            qa_row(gold_answer=""),  # 7 empty answer
            qa_row(gold_answer=..., answer=""),  # 8 empty answer under an alias
            qa_row(gold_answer=..., answers=[]),  # 9 empty list under an alias
            qa_row(gold_answer=..., golden_answers=[None]),  # 10 null under an alias
            qa_row(gold_answer=...),  # 11 no answer at all
            qa_row(question=["a list"]),  # 12 wrong type
            "[1, 2]",  # 13 not an object
            qa_row(pos_index=["0", True]),  # 14 wrong item types
            qa_row(),  # 15 ok
        ],
    )
    with pytest.raises(DataError) as info:
        read_jsonl(path, "stage2")
    found = problems_by_line(info.value.problems)
    assert sorted(found) == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    fields = {line: [f for f, _ in items] for line, items in found.items()}
    assert fields == {
        2: ["<row>"],
        3: ["docs"],
        5: ["docs"],
        6: ["pos_index"],
        7: ["gold_answer"],
        8: ["answer"],
        9: ["answers"],
        10: ["golden_answers"],
        11: ["gold_answer"],
        12: ["question"],
        13: ["<row>"],
        14: ["pos_index"],
    }
    assert "invalid JSON" in found[2][0][1]
    assert "missing" in found[3][0][1]
    assert "item 1 is empty" in found[5][0][1]
    assert "index 3 out of range for 3 docs" in found[6][0][1]
    assert "'answer', 'answers', 'golden_answers'" in found[11][0][1]
    assert "item 0 is string; item 1 is boolean" in found[14][0][1]

    message = str(info.value)
    assert f"{path}: 12 of 14 rows are not valid stage2 rows" in message
    assert f"{path}:6: field 'pos_index': index 3 out of range for 3 docs" in message
    assert f"{path}:2: field '<row>': invalid JSON" in message
    assert "Fix or remove these lines" in message

    report = validate_file(path, "stage2")  # the same findings, without raising
    assert report.problems == info.value.problems
    assert report.n_rows == 14 and report.n_bad == 12
    assert report.docs_per_row == {3: 2}


def test_validate_file_top_k(tmp_path):
    path = write_lines(
        tmp_path / "s2.jsonl",
        [
            qa_row(docs=["a", "b", "c"]),
            qa_row(docs=["a", "b"], pos_index=[0]),  # too few for top_k=3
            qa_row(docs=["a", "b", "c", "d"]),  # enough, but unlike the others
            qa_row(docs=["a", "b", "c"]),
            qa_row(question=""),  # bad row, not counted in the doc histogram
        ],
    )
    # unequal doc counts stop any step that batches them together: reported even without top_k
    assert [(p.line, p.field) for p in validate_file(path, "stage2").problems] == [(2, "docs"), (3, "docs"),
                                                                                  (5, "question")]
    assert "rows batched together need equal counts" in validate_file(path, "stage2").problems[0].reason

    report = validate_file(path, "stage2", top_k=3)
    assert not report.ok
    assert report.n_bad == 3
    assert report.docs_per_row == {2: 1, 3: 2, 4: 1}
    assert report.n_with_pos_index == 4
    assert [(p.line, p.field) for p in report.problems] == [(2, "docs"), (3, "docs"), (5, "question")]
    assert "only 2 docs but top_k=3" in report.problems[0].reason
    assert "4 docs, most rows have 3" in report.problems[1].reason

    text = report.format()
    assert text.splitlines()[0] == f"{path} (stage2, top_k=3): 5 rows, 3 bad"
    assert "docs per row: 2 docs: 1 rows, 3 docs: 2 rows, 4 docs: 1 rows" in text
    assert f"{path}:2: field 'docs': only 2 docs" in text
    assert text.index("docs per row") < text.index(f"{path}:2:")

    assert validate_file(path, "stage2", top_k=2).n_bad == 3  # counts still unequal
    with pytest.raises(ValueError, match="top_k"):
        validate_file(path, "stage2", top_k=0)


def test_utf8_bom_and_crlf(tmp_path):
    path = tmp_path / "bom.jsonl"
    rows = [json.dumps(qa_row()), json.dumps(qa_row(question="Why?"))]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode("utf-8") + b"\r\n")
    examples = read_jsonl(path, "stage2")
    assert [ex.question for ex in examples] == ["Who?", "Why?"]


def test_invalid_utf8_line_is_a_problem(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(qa_row()).encode() + b"\n" + '{"question": "caf\xe9"}'.encode("latin-1") + b"\n"
    )
    report = validate_file(path, "stage2")
    assert report.problems == [Problem(2, "<row>", "not valid UTF-8 at byte offset 17")]


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(FileNotFoundError, match="train.jsonl") as info:
        read_jsonl(missing, "stage2")
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        validate_file(str(missing), "stage1")


def test_empty_file_and_unknown_stage(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        read_jsonl(path, "stage1")
    report = validate_file(path, "stage1")
    assert report.n_rows == 0 and report.n_bad == 0 and not report.ok
    with pytest.raises(ValueError, match="(?i)unknown stage 'stage2_reasoning'"):  # the registry's message
        read_jsonl(path, "stage2_reasoning")


def test_examples_are_frozen(tmp_path):
    example = read_jsonl(write_lines(tmp_path / "one.jsonl", [qa_row()]), "stage2")[0]
    with pytest.raises(AttributeError):
        example.question = "changed"
