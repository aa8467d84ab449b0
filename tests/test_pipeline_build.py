"""End to end: a folder of real documents -> valid stage1/2/3 + held-out JSONL through a loopback endpoint."""

from __future__ import annotations

import json
import logging

import pytest
from test_pipeline_support import FakeLLM, make_documents

from clara_lite import notebook as nb
from clara_lite.cli import main
from clara_lite.model.data import read_jsonl, validate_file
from clara_lite.pipeline.records import read_rows

KEY = "sk-live-0123456789abcdef-SECRET"


@pytest.fixture
def endpoint(monkeypatch):
    with FakeLLM(key=KEY) as llm:
        monkeypatch.setenv("CLARA_LLM_BASE_URL", llm.url)
        monkeypatch.setenv("CLARA_LLM_MODEL", "fake-instruct")
        monkeypatch.setenv("CLARA_LLM_API_KEY", KEY)
        monkeypatch.delenv("CLARA_VLM_MODEL", raising=False)
        yield llm


def test_documents_to_valid_training_files(tmp_path, endpoint, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    docs = make_documents(tmp_path / "docs")
    out = tmp_path / "data"
    argv = ["data", "build", "--input", str(docs), "--out", str(out), "--doc-max-length", "64", "--overlap", "16",
            "--k", "4", "--heldout", "0.2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "extractor: light extractors (docling not installed)" in printed
    assert "skipped broken.pdf: cannot read" in printed and "skipped secret.pdf: password-protected PDF" in printed

    for name, stage in (("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3"), ("heldout", "stage3")):
        report = validate_file(out / f"{name}.jsonl", stage, top_k=None if stage == "stage1" else 4)
        assert report.ok and report.n_rows > 0, report.format()
    stage1 = read_jsonl(out / "stage1.jsonl", "stage1")
    assert {r.data_type for r in stage1} == {"qa", "paraphrase"}

    raw = read_rows(out / "raw.jsonl")
    assert {(r["source"], r["page"]) for r in raw if r["source"].endswith(".pdf")} == {
        ("science_notes.pdf", 1), ("science_notes.pdf", 2), ("science_notes.pdf", 3)}
    assert not any(r["source"] in ("broken.pdf", "secret.pdf") for r in raw)
    build = json.loads((out / "build_report.json").read_text())
    assert [s["source"] for s in build["extract"]["skipped"]] == ["broken.pdf", "secret.pdf"]
    assert build["images"]["without_vision"] == 4 and not build["images"]["requested"]  # no vision model
    synth = read_rows(out / "synth.jsonl")
    assert len({r["id"] for r in synth}) == len(synth) == build["chunks"]["text"]
    assert all(len(r["qa"]) == 3 and r["summary"] for r in synth)

    # held-out documents (whole source files) are in no training file
    train = "".join((out / f"{n}.jsonl").read_text() for n in ("stage1", "stage2", "stage3"))
    held_sources = {r["source"] for r in synth} - {r["source"] for r in synth if json.dumps(r["doc"])[1:-1] in train}
    assert held_sources and all(json.dumps(d)[1:-1] not in train
                                for row in read_jsonl(out / "heldout.jsonl", "stage3") for d in
                                (row.docs[i] for i in row.pos_index))

    # the key went to the server, and nowhere else
    assert all(r["auth"] == f"Bearer {KEY}" for r in endpoint.requests)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if KEY.encode() in p.read_bytes()]
    assert KEY not in printed and KEY not in caplog.text

    # a rerun resumes: nothing left to generate, the same files
    before = {n: (out / f"{n}.jsonl").read_bytes() for n in ("stage1", "stage2", "stage3", "heldout")}
    n_requests = len(endpoint.requests)
    assert main(argv) == 0
    assert len(endpoint.requests) == n_requests
    assert before == {n: (out / f"{n}.jsonl").read_bytes() for n in before}


def test_generator_failure_stops_with_a_resume_hint(tmp_path, endpoint, caplog):
    docs = make_documents(tmp_path / "docs")
    endpoint.errors = [(400, {})] * 1
    code = main(["data", "build", "--input", str(docs), "--out", str(tmp_path / "o"), "--doc-max-length", "64"])
    assert code == 3 and "rerun the same command to resume" in caplog.text


def test_notebook_builds_the_run_data_from_raw_documents(tmp_path, endpoint, capsys):
    docs = make_documents(tmp_path / "drive" / "my_docs")
    drive = tmp_path / "drive"
    settings = nb.save_settings(drive, nb.Settings(run_name="r", doc_max_length=64))
    saved = nb.Workspace(drive, settings).prepare_data("raw", "my_docs")
    printed = capsys.readouterr().out
    assert "light extractors (docling not installed)" in printed and "skipped broken.pdf" in printed
    assert saved.data_dir == "data/r-raw" and docs.is_dir()
    reports = nb.Workspace(drive, saved).check_data()
    assert all(r.ok for r in reports.values()) and set(reports) == {"stage1", "stage2", "stage3", "heldout"}


def test_step_by_step_commands(tmp_path, endpoint, capsys, monkeypatch):
    docs = make_documents(tmp_path / "docs")
    raw, pages, chunks, synth = (tmp_path / f"{n}.jsonl" for n in ("raw", "pages", "chunks", "synth"))
    assert main(["data", "extract", "--input", str(docs), "--out", str(raw), "--docling", "no",
                 "--images-dir", str(tmp_path / "images")]) == 0
    monkeypatch.setenv("CLARA_VLM_MODEL", "fake-vl")
    assert main(["data", "describe", "--input", str(raw), "--out", str(pages)]) == 0
    # the PDF holds figure.png: the same bytes as the file beside it, asked about once
    assert "images: 4 of 4 described (3 requests this run), 0 converted, 0 skipped" in capsys.readouterr().out
    coffee = next(r for r in read_rows(pages) if r["source"] == "coffee.docx")["text"]  # in place, in its document
    assert "their effect.\n\n[Image: A 24x16 picture, mostly rgb(20, 120, 40).]\n\nArabica" in coffee
    assert (tmp_path / "images.jsonl").is_file()
    assert main(["data", "chunk", "--input", str(pages), "--out", str(chunks), "--doc-max-length", "64"]) == 0
    assert "chunks (median" in capsys.readouterr().out
    assert main(["data", "synthesize", "--input", str(chunks), "--out", str(synth), "--questions", "4",
                 "--question-language", "French", "--limit", "3"]) == 0
    assert "(0 already done, 3 in all)" in capsys.readouterr().out
    assert "in French" in endpoint.requests[-1]["body"]["messages"][0]["content"]
    assert main(["data", "synthesize", "--input", str(chunks), "--out", str(synth)]) == 0  # the rest
    assert main(["data", "negatives", "--input", str(synth), "--out", str(tmp_path / "qa.jsonl"), "--k", "3",
                 "--strategy", "embedding"]) == 0
    assert validate_file(tmp_path / "qa.jsonl", "stage2", top_k=3).ok
    assert main(["data", "split", "--input", str(synth), "--chunks", str(chunks), "--out-dir", str(tmp_path / "d"),
                 "--strategy", "mixed"]) == 0
    assert validate_file(tmp_path / "d" / "stage3.jsonl", "stage3", top_k=4).ok
    assert len(read_rows(synth)) == len(read_rows(chunks))


def test_the_openai_sdks_variables_alone_send_data_build_to_that_server(tmp_path, monkeypatch, caplog):
    """OPENAI_BASE_URL / OPENAI_API_KEY (the SDK's names) and no model: the endpoint's first listed model."""
    for name in ("CLARA_LLM_BASE_URL", "CLARA_LLM_MODEL", "CLARA_LLM_API_KEY", "CLARA_VLM_MODEL", "BASE_URL",
                 "MODEL", "VISION_MODEL"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO)
    with FakeLLM(key=KEY) as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        docs = make_documents(tmp_path / "docs")
        assert main(["data", "build", "--input", str(docs), "--out", str(tmp_path / "data"), "--doc-max-length",
                     "64", "--k", "4"]) == 0
    chats = [r for r in llm.requests if r["path"].endswith("/chat/completions")]
    assert chats and all(r["auth"] == f"Bearer {KEY}" for r in llm.requests)
    assert {r["body"]["model"] for r in chats} == {"served-instruct"}
    assert "served-instruct, the first of 2 the endpoint lists" in caplog.text
    assert KEY not in caplog.text


def test_a_fallback_to_the_local_generator_names_the_variables_it_looked_for(monkeypatch, caplog):
    from clara_lite.pipeline.generators import LocalModel, make_generator

    for name in ("CLARA_LLM_BASE_URL", "OPENAI_BASE_URL", "BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO)
    assert isinstance(make_generator("auto", "tiny-random"), LocalModel)
    assert "none of CLARA_LLM_BASE_URL, OPENAI_BASE_URL, BASE_URL is set" in caplog.text
