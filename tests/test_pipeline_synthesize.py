"""Synthesis: parsing model output, the HTTP generator (retries, secrecy), resume after a kill, local model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline_support import TOPICS, FakeLLM

from clara_lite.pipeline.chunk import chunk_id
from clara_lite.pipeline.convert import from_synthesis
from clara_lite.pipeline.generators import GeneratorError, OpenAICompatible
from clara_lite.pipeline.records import Chunk, read_rows, recover_appended, row_of, write_jsonl
from clara_lite.pipeline.split import write_stage_files
from clara_lite.pipeline.synthesize import SynthesisConfig, parse_qa, parse_summary, qa_messages, synthesize

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-7f3a9c-DO-NOT-LEAK"


def make_chunks(n: int = 8) -> list[Chunk]:
    texts = list(TOPICS.values()) * (n // len(TOPICS) + 1)
    return [Chunk(chunk_id(f"doc{i % 4}.txt", None, i, t), f"doc{i % 4}.txt", None, f"Doc {i % 4}", i, t, 50)
            for i, t in enumerate(texts[:n])]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("reply, expected, dropped", [
    ('[{"question": "Who decoded the dance?", "answer": "Karl von Frisch"}]', [("Who decoded the dance?", "Karl von Frisch")], 0),
    # fenced, with prose around it, trailing comma and a missing bracket: repaired
    ('Sure!\n```json\n[{"question": "When did it open?", "answer": "1937"},\n{"question": "Who was engineer?", '
     '"answer": "Strauss"},\n```', [("When did it open?", "1937"), ("Who was engineer?", "Strauss")], 0),
    ('{"qa": [{"q": "How tall is Etna?", "a": "3,357 metres"}, {"q": "Where is it?"}]}',
     [("How tall is Etna?", "3,357 metres")], 1),
    ('[["What is float glass made by?", "the float process"], "junk"]', [("What is float glass made by?", "the float process")], 1),
    ("Q: 1. What is photosynthesis?\nA: Making sugar from light.\n\nQuestion 2: Where does it happen?\nAnswer 2: In chloroplasts."
     "\nQ: Dangling question without answer?\nQ: Which pigment is green?\nA: Chlorophyll",
     [("What is photosynthesis?", "Making sugar from light."), ("Where does it happen?", "In chloroplasts."),
      ("Which pigment is green?", "Chlorophyll")], 1),
    ("**Q:** Who won in 1886? **A:** Steinitz", [("Who won in 1886?", "Steinitz")], 0),
    ("Q: Same question here?\nA: x\nQ: same question here?\nA: y\nA: orphan answer", [("Same question here?", "x")], 2),
    ("I cannot help with that.", [], 0),
])
def test_parse_qa(reply, expected, dropped):
    assert parse_qa(reply) == (expected, dropped)


def test_parse_qa_keeps_at_most_the_limit_and_parse_summary_strips_labels():
    reply = "\n".join(f"Q: Question number {n}?\nA: {n}" for n in range(6))
    assert len(parse_qa(reply, limit=4)[0]) == 4
    assert parse_summary("Summary: **Etna** is tall.") == "**Etna** is tall."
    assert parse_summary('```json\n{"summary": "Bees dance."}\n```') == "Bees dance."
    assert parse_summary("   ") is None


def test_cross_lingual_prompt_names_the_language():
    prompt = qa_messages("Text", SynthesisConfig(question_language="German", qa_format="json"))[0]["content"]
    assert "in German" in prompt and "JSON list" in prompt


# --------------------------------------------------------------------------- HTTP generator


def test_rate_limits_and_server_errors_are_retried_honouring_retry_after():
    waits = []
    errors = [(429, {"Retry-After": "7"}), (503, {}), (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})]
    with FakeLLM(key=KEY, errors=errors) as llm:
        gen = OpenAICompatible(llm.url, "m", KEY, sleep=waits.append, backoff=0.5)
        reply = gen.chat([{"role": "user", "content": "Summarize this.\n\nText:\nBees dance."}], max_tokens=20)
    assert reply.startswith("Summary: Bees dance.")
    assert waits == [7.0, 1.0, 0.0]  # Retry-After seconds; back-off 0.5 * 2**1; a date in the past: no wait
    assert len(llm.requests) == 4 and all(r["auth"] == f"Bearer {KEY}" for r in llm.requests)


def test_a_bad_key_fails_at_once_and_the_key_is_not_in_the_message():
    with FakeLLM(key="the-right-key") as llm:
        gen = OpenAICompatible(llm.url, "m", KEY, sleep=lambda s: pytest.fail("401 must not be retried"))
        with pytest.raises(GeneratorError, match="HTTP 401") as err:
            gen.chat([{"role": "user", "content": "hi"}], max_tokens=5)
    assert KEY not in str(err.value) and "***" in str(err.value)  # the server echoed it; we redacted it
    assert KEY not in repr(gen)


def test_network_errors_are_retried_then_reported(caplog):
    with FakeLLM() as llm:
        url = llm.url
    waits = []
    gen = OpenAICompatible(url, "m", KEY, max_retries=3, sleep=waits.append, timeout=2)
    with pytest.raises(GeneratorError, match="network error.*gave up after 4 attempts"):
        gen.chat([{"role": "user", "content": "hi"}], max_tokens=5)
    assert waits == [1.0, 2.0, 4.0]
    assert "retrying" in caplog.text and KEY not in caplog.text


# --------------------------------------------------------------------------- resumable synthesis


def test_synthesis_writes_one_row_per_chunk_and_resumes_after_a_torn_line(tmp_path):
    chunks = make_chunks(4)
    out = tmp_path / "synth.jsonl"
    with FakeLLM(key=KEY) as llm:
        gen = OpenAICompatible(llm.url, "fake", KEY)
        full = tmp_path / "full.jsonl"
        report = synthesize(chunks, full, gen)
        assert report.generated == 4 and report.pairs == 12 and report.without_qa == 0
        rows = read_rows(full)
        assert [r["id"] for r in rows] == [c.id for c in chunks]
        assert rows[0]["summary"].startswith("Mount Etna") and len(rows[0]["qa"]) == 3
        # a killed writer: two rows and half of the third
        lines = full.read_bytes().splitlines(keepends=True)
        out.write_bytes(b"".join(lines[:2]) + lines[2][:30])
        n = len(llm.requests)
        again = synthesize(chunks, out, gen)
        assert again.done_before == 2 and again.generated == 2 and len(llm.requests) - n == 4
        assert synthesize(chunks, out, gen).generated == 0  # all done: no call at all
    assert out.read_bytes() == full.read_bytes()


def test_recover_refuses_a_bad_line_in_the_middle(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        recover_appended(path)


def _synthesize_cmd(chunks_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "clara_lite.cli", "data", "synthesize", "--input", str(chunks_path),
            "--out", str(out), "--generator", "api"]


def test_killed_synthesis_resumes_to_the_same_files_as_an_uninterrupted_run(tmp_path):
    chunks = make_chunks(8)
    chunks_path = write_jsonl(tmp_path / "chunks.jsonl", (row_of(c) for c in chunks))
    killed, full = tmp_path / "killed" / "synth.jsonl", tmp_path / "full" / "synth.jsonl"
    with FakeLLM(key=KEY, delay=0.15) as llm:
        env = {**os.environ, "CLARA_LLM_BASE_URL": llm.url, "CLARA_LLM_MODEL": "fake", "CLARA_LLM_API_KEY": KEY,
               "OMP_NUM_THREADS": "1"}
        killed.parent.mkdir()
        proc = subprocess.Popen(_synthesize_cmd(chunks_path, killed), env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if killed.exists() and killed.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        done_when_killed = killed.read_bytes().count(b"\n")
        assert 3 <= done_when_killed < 8, "the run must be killed halfway"
        resumed = subprocess.run(_synthesize_cmd(chunks_path, killed), env=env, cwd=ROOT, capture_output=True,
                                 text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"({done_when_killed} already done, 8 in all)" in resumed.stdout
        synthesize(chunks, full, OpenAICompatible(llm.url, "fake", KEY))  # uninterrupted, same endpoint
    assert killed.read_bytes() == full.read_bytes()
    ids = [r["id"] for r in read_rows(killed)]
    assert ids == [c.id for c in chunks]  # every chunk once, in order
    for path in (killed, full):
        write_stage_files(from_synthesis(read_rows(path)), path.parent, k=4, heldout=0.25)
    for name in ("stage1", "stage2", "stage3", "heldout"):
        assert (killed.parent / f"{name}.jsonl").read_bytes() == (full.parent / f"{name}.jsonl").read_bytes()
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked and KEY not in resumed.stdout + resumed.stderr


def test_bilingual_synthesis_writes_both_languages_per_chunk_and_the_split_keeps_them_together(tmp_path):
    chunks = make_chunks(8)
    with FakeLLM() as llm:
        config = SynthesisConfig(question_language="en,zh", n_questions=2)
        report = synthesize(chunks, tmp_path / "synth.jsonl", OpenAICompatible(llm.url, "fake"), config)
        qa_prompts = [r["body"]["messages"][0]["content"] for r in llm.requests if "questions" in
                      r["body"]["messages"][0]["content"]]
    assert report.generated == 8 and report.pairs == 8 * 2 * 2
    assert sum("in English" in p for p in qa_prompts) == sum("in Chinese" in p for p in qa_prompts) == 8
    rows = read_rows(tmp_path / "synth.jsonl")
    for row in rows:
        assert row["language"] == ["en", "zh"]
        assert [p["language"] for p in row["qa"]] == ["en", "en", "zh", "zh"]
    corpus = from_synthesis(rows)
    paths, stats = write_stage_files(corpus, tmp_path, k=3, heldout=0.25)
    assert stats["heldout_questions"] == 2 * 4  # one of the 4 source files held out: 2 chunks, 2 x 2 questions each
    by_doc = {}  # every chunk's questions, both languages, are on one side of the split
    for name in ("stage2", "heldout"):
        for row in read_rows(paths[name]):
            by_doc.setdefault(row["docs"][row["pos_index"][0]], set()).add(name)
    assert by_doc and all(len(sides) == 1 for sides in by_doc.values())


def test_prompt_files_replace_the_shipped_ones(tmp_path):
    from clara_lite.pipeline import prompts

    assert prompts.default("qa").startswith("Write {n} questions") and "{text}" in prompts.default("summary")
    qa = tmp_path / "qa.txt"
    qa.write_text('Frage {n} mal, Antwort kurz.{language} Format: {format} Beispiel: {"q": 1}\n\nTEXT:\n{text}\n')
    config = SynthesisConfig(qa_prompt=str(qa), qa_format="json", question_language="fr")
    prompt = qa_messages("Etna.", config, template=prompts.load("qa", qa))[0]["content"]
    assert prompt.startswith("Frage 3 mal") and "in French" in prompt and '{"q": 1}' in prompt
    assert prompt.endswith("TEXT:\nEtna.")
    bad = tmp_path / "bad.txt"
    bad.write_text("Summarize please.")
    with pytest.raises(ValueError, match=r"bad.txt: the summary prompt needs \{text\}"):
        synthesize(make_chunks(1), tmp_path / "s.jsonl", None, SynthesisConfig(summary_prompt=str(bad)))
    assert not (tmp_path / "s.jsonl").exists() or not (tmp_path / "s.jsonl").read_text()


# --------------------------------------------------------------------------- local model


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")  # conftest.py: one thread, then back
def test_local_smollm2_synthesis_gives_parseable_pairs_on_most_chunks(tmp_path, record_property):
    from clara_lite.pipeline.generators import LocalModel

    chunks = make_chunks(5)
    started = time.monotonic()
    generator = LocalModel("smollm2-135m")
    config = SynthesisConfig(n_questions=3, max_tokens=96, summary_max_tokens=48)
    report = synthesize(chunks, tmp_path / "synth.jsonl", generator, config)
    rows = read_rows(tmp_path / "synth.jsonl")
    rate = sum(bool(r["qa"]) for r in rows) / len(rows)
    seconds = time.monotonic() - started
    print(f"smollm2-135m: {rate:.0%} of {len(rows)} chunks with a parseable pair; {report.pairs} pairs, "
          f"{report.dropped} dropped; {seconds:.0f} s")
    for row in rows:
        print(json.dumps({"summary": row["summary"], "qa": row["qa"]}, ensure_ascii=False)[:300])
    record_property("smollm2_parse_rate", rate)
    assert rate >= 0.6


def test_a_small_local_model_keeps_grounded_answers_and_fills_up_with_cloze_pairs_from_the_text():
    """The local fallback (a model far too small to write questions, here the tiny random one) still gives
    every passage its pairs, each answer a span of the passage."""
    from clara_lite.pipeline.generators import LocalModel
    from clara_lite.pipeline.records import Chunk
    from clara_lite.pipeline.synthesize import SynthesisConfig, synthesize_chunk

    generator = LocalModel("tiny-random")
    assert generator.small
    text = TOPICS["volcanoes"]
    row = synthesize_chunk(Chunk("c", "s.txt", None, "", 0, text), generator, SynthesisConfig(summary=False))
    assert len(row["qa"]) == 3 and row["cloze"] >= 1
    assert all(pair["answer"] in text for pair in row["qa"][-row["cloze"]:])
    assert all("____" in pair["question"] for pair in row["qa"][-row["cloze"]:])
