"""The compressed document index: chunks keep every character, a saved index answers like compressing on the
fly (in a fresh process too), a killed build resumes to the same files, another model is refused, documents
are added and removed without recompressing the rest, and the serving decoder answers like the model."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import one_thread, tiny_model

from clara_lite.pipeline.chunk import load_tokenizer
from clara_lite.serve.decoding import ServingDecoder
from clara_lite.serve.documents import chunk_documents, document_text, documents_from
from clara_lite.serve.fingerprint import FingerprintMismatch
from clara_lite.serve.index import ClaraIndex
from clara_lite.serve.index_folder import IndexFolderError

ROOT = Path(__file__).resolve().parents[1]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma omega".split()
QUESTIONS = ["Where does Ada live?", "What is gamma delta?", "Who works as a cook in Rome?"]
MODEL = dict(seed=3, doc_max_length=24, compr_rate=6, generation_top_k=2)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():  # the machine is shared: one thread is faster and steadier
        yield


def served_model(adapters=("encoder", "decoder", "query_reasoner"), scale: float = 1.0, **config):
    """A tiny model whose LoRA weights are not zero (a fresh LoRA's B is 0: every adapter would be the base)."""
    model = tiny_model(adapters=adapters, **{**MODEL, **config})
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize() + "."
                     for _ in range(rng.randint(1, 5))]
        docs.append(f"Note {i}. " + " ".join(sentences))
    return docs


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- chunking


def test_chunking_never_drops_text_and_spans_point_at_it():
    tokenizer = load_tokenizer("tiny-random")
    rng = random.Random(1)
    paragraphs = [" ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40))).capitalize() + "."
                           for _ in range(rng.randint(1, 6))) for _ in range(15)]
    paragraphs.insert(7, "x" * 500)  # one 'word' longer than a whole chunk
    long = "\n\n".join(paragraphs)
    docs = documents_from([long, "Short."])
    chunks = chunk_documents(docs, tokenizer, doc_max_length=32)
    text = document_text(docs[0].pages())
    covered = bytearray(len(text))
    for c in chunks[0]:
        assert " ".join(text[c.start:c.end].split()) == " ".join(c.text.split())  # the span is the chunk
        assert c.n_tokens <= 31  # the encoder reads it whole (doc_max_length minus the token where text meets eos)
        covered[c.start:c.end] = b"\x01" * (c.end - c.start)
    missing = [i for i, ch in enumerate(text) if not covered[i] and not ch.isspace()]
    assert missing == [] and len(chunks[0]) > 20
    assert [(c.text, c.start, c.end) for c in chunks[1]] == [("Short.", 0, 6)]  # no minimum length: nothing dropped
    assert any(b.start < a.end for a, b in zip(chunks[0], chunks[0][1:], strict=False))  # short sentences carried over


def test_a_folder_of_documents_is_chunked_with_sources_and_pages(tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    for page in range(2):
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 8, f"Page {page + 1} says the bridge is {page + 3} meters long. " * 3)
    pdf.output(str(tmp_path / "report.pdf"))
    (tmp_path / "notes.md").write_text("# Notes\n\nThe **river** is blue.\n", encoding="utf-8")
    (tmp_path / "ignored.xyz").write_text("not a document")
    docs = documents_from(tmp_path)
    assert [d.source for d in docs] == ["notes.md", "report.pdf"]
    chunks = chunk_documents(docs, load_tokenizer("tiny-random"), doc_max_length=64)
    assert chunks[0][0].text == "Notes\nThe river is blue." and chunks[0][0].page is None
    assert {c.page for c in chunks[1]} == {1, 2} and "bridge" in chunks[1][0].text


# --------------------------------------------------------------------------- build, save, load


def _reference(model, pool: list[str], questions: list[str], k: int):
    """What compressing on the fly gives: generate_from_questions over the whole pool."""
    answers, top = model.generate_from_questions(questions, [pool] * len(questions), max_new_tokens=6, top_k=k)
    return answers, top.tolist()


FRESH = """
import json, sys, torch
torch.set_num_threads(1)
from clara_lite import ClaraModel
from clara_lite.serve.index import ClaraIndex
model = ClaraModel.from_pretrained(sys.argv[1])
index = ClaraIndex.load(sys.argv[2], model)
questions = json.loads(sys.argv[3])
hits = index.search_many(questions, 2)
answers = index.ask_many(questions, 2, max_new_tokens=6)
print(json.dumps({"rows": [[h.row for h in hs] for hs in hits], "answers": [a.text for a in answers]}))
"""


def test_saved_index_answers_like_compressing_on_the_fly_also_in_a_fresh_process(tmp_path):
    model = served_model()
    pool = corpus(40)
    model.save_pretrained(tmp_path / "model")
    index = ClaraIndex.build(tmp_path / "kb", model, pool, dtype="float32", keys=(), batch_size=4, progress=False)
    texts = [c.text for c in index.chunks]
    assert len(texts) > 40  # long notes became several chunks
    ref_answers, ref_top = _reference(model, texts, QUESTIONS, 2)
    assert len(set(ref_answers)) > 1 and all(ref_answers)  # answers worth comparing

    hits = index.search_many(QUESTIONS, 2)
    assert [[h.row for h in hs] for hs in hits] == ref_top
    assert [a.text for a in index.ask_many(QUESTIONS, 2, max_new_tokens=6)] == ref_answers
    assert [index.ask(q, 2, max_new_tokens=6).text for q in QUESTIONS] == ref_answers  # one at a time too

    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "model"), str(tmp_path / "kb"),
                          json.dumps(QUESTIONS)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh == {"rows": ref_top, "answers": ref_answers}


def test_fp16_index_ranks_like_fp32_and_hits_carry_their_sources(tmp_path):
    model = served_model()
    pool = corpus(30, seed=2)
    full = ClaraIndex.build(tmp_path / "fp32", model, pool, dtype="float32", keys=(), progress=False)
    half = ClaraIndex.build(tmp_path / "fp16", model, pool, keys=(), progress=False)
    assert half.meta["settings"]["dtype"] == "float16"
    a = full.memory_rows(range(len(full.chunks)))
    b = half.memory_rows(range(len(half.chunks)))
    assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=2e-3, atol=2e-3)
    assert [[h.row for h in hs] for hs in half.search_many(QUESTIONS, 3)] == \
        [[h.row for h in hs] for hs in full.search_many(QUESTIONS, 3)]
    hit = half.search(QUESTIONS[0], 1)[0].to_dict()
    assert set(hit) == {"score", "id", "source", "page", "title", "start", "end", "text"}
    doc = next(d for d in documents_from(pool) if d.source == hit["source"])
    assert " ".join(doc.text[hit["start"]:hit["end"]].split()) == " ".join(hit["text"].split())
    info = half.info()
    assert info["bytes_per_chunk"] == pytest.approx(info["memory_bytes"] / info["chunks"], abs=0.1)
    assert info["bytes_per_chunk"] >= model.config.n_mem * 64 * 2  # n_mem x hidden x fp16, plus headers


def test_a_killed_build_resumes_to_the_same_files_as_an_uninterrupted_one(tmp_path):
    model = served_model(adapters=("encoder", "decoder"))
    model.save_pretrained(tmp_path / "model")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t, "source": f"doc-{i:03d}"}) + "\n"
                            for i, t in enumerate(corpus(160, seed=5))))
    args = ["--model", str(tmp_path / "model"), "--input", str(docs), "--keys", "none", "--batch-size", "2",
            "--group-docs", "4", "--part-rows", "8", "--no-progress"]

    def build(out: Path, **kw):
        return subprocess.Popen([sys.executable, "-m", "clara_lite.cli", "index", "build", "--out", str(out), *args],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

    killed = tmp_path / "killed"
    proc = build(killed)
    deadline = time.monotonic() + 240
    while len(list((killed / "memory").glob("*.safetensors"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    parts = sorted((killed / "memory").glob("*.safetensors"))
    assert not (killed / "manifest.json").exists() and len(parts) < 40  # stopped in the middle
    parts[-1].write_bytes(parts[-1].read_bytes()[:-50])  # as if killed while writing that file

    with pytest.raises(IndexFolderError, match="not a complete index"):
        ClaraIndex.load(killed, model)
    resumed = build(killed)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    clean = build(tmp_path / "clean")
    assert clean.wait(timeout=300) == 0, clean.stdout.read()
    assert folder_files(killed) == folder_files(tmp_path / "clean")
    assert ClaraIndex.load(killed, model).meta["n_chunks"] > 160


def test_an_index_is_refused_by_another_model_and_accepted_at_another_precision(tmp_path):
    model = served_model()
    ClaraIndex.build(tmp_path / "kb", model, corpus(6), keys=(), progress=False)
    other = tiny_model(adapters=("encoder", "decoder", "query_reasoner"), **{**MODEL, "seed": 4})
    with pytest.raises(FingerprintMismatch, match="built with another model.*encoder: other weights"):
        ClaraIndex.load(tmp_path / "kb", other)
    longer = tiny_model(adapters=("encoder", "decoder"), **{**MODEL, "doc_max_length": 48})
    with pytest.raises(FingerprintMismatch, match="doc_max_length: index 24, model 48"):
        ClaraIndex.load(tmp_path / "kb", longer)
    model.to(torch.bfloat16)  # the same weights rounded, as on a GPU
    assert len(ClaraIndex.load(tmp_path / "kb", model).chunks) > 0


def test_adding_and_removing_documents_keeps_the_other_memory(tmp_path):
    model = served_model()
    first, second = corpus(8, seed=11), corpus(5, seed=12)
    index = ClaraIndex.build(tmp_path / "kb", model, first, keys=(), group_docs=3, part_rows=4, progress=False)
    before = {c.id: m for c, m in zip(index.chunks, index.memory_rows(range(len(index.chunks))), strict=True)}
    assert index.add(second, progress=False) == {"added": 5, "replaced": 0, "unchanged": 0, "skipped": []}
    assert index.add(second[:2], progress=False)["unchanged"] == 2  # the same text again: nothing to do
    assert {c.source for c in index.chunks} == {c.source for c in documents_from(first + second)}

    jsonl = tmp_path / "named.jsonl"
    jsonl.write_text(json.dumps({"source": "faq", "text": "Ada lives in Paris."}) + "\n")
    index.add(jsonl, progress=False)
    jsonl.write_text(json.dumps({"source": "faq", "text": "Ada lives in Rome now."}) + "\n")
    with pytest.raises(IndexFolderError, match=r"faq is already in .* with other text.*\(--replace\)"):
        index.add(jsonl, progress=False)
    assert index.add(jsonl, replace=True, progress=False)["replaced"] == 1
    assert [c.text for c in index.chunks if c.source == "faq"] == ["Ada lives in Rome now."]

    gone = documents_from(first[:2])
    removed = index.remove([d.source for d in gone])
    assert removed > 0 and not {d.source for d in gone} & {c.source for c in index.chunks}
    reloaded = ClaraIndex.load(tmp_path / "kb", model)
    memory = reloaded.memory_rows(range(len(reloaded.chunks)))
    for chunk, row in zip(reloaded.chunks, memory, strict=True):
        if chunk.id in before:
            assert torch.equal(row, before[chunk.id])  # copied, not recompressed
    fresh = ClaraIndex.build(tmp_path / "fresh", model, ["Ada lives in Rome now."], keys=(), progress=False)
    assert torch.equal(memory[[c.source for c in reloaded.chunks].index("faq")], fresh.memory_rows([0])[0])


def test_minilm_bm25_and_hybrid_retrievers_serve_the_same_index(tmp_path):
    model = served_model()
    pool = ["The Eiffel Tower is in Paris.", "Bananas are yellow fruit.", "Rome is the capital of Italy.",
            "The Nile is a long river in Africa.", "Python was created by Guido van Rossum."]
    index = ClaraIndex.build(tmp_path / "kb", model, pool, keys="minilm", progress=False)
    assert index.meta["settings"]["keys"] == ["minilm"]
    for name in ("minilm", "bm25"):
        index = ClaraIndex.load(tmp_path / "kb", model, retriever=name)
        assert index.search("Who created Python?", 1)[0].chunk.text == pool[4], name
        assert index.search("Which river flows in Africa?", 1)[0].chunk.text == pool[3], name
    hybrid = ClaraIndex.load(tmp_path / "kb", model, retriever="hybrid", hybrid_candidates=3)
    clara = ClaraIndex.load(tmp_path / "kb", model, retriever="clara")
    q = "Who created Python?"
    first_stage = {h.row for h in ClaraIndex.load(tmp_path / "kb", model, retriever="minilm").search(q, 3)}
    got = hybrid.search(q, 2)
    assert {h.row for h in got} <= first_stage  # re-ranked among the first stage's candidates
    scores = {h.row: h.score for h in clara.search(q, 5)}
    assert [h.score for h in got] == pytest.approx([scores[h.row] for h in got], abs=1e-5)  # by the query reasoner
    without = served_model()
    without.lm.delete_adapter("query_reasoner")  # the same encoder and decoder, no query reasoner (stage2)
    stage2 = ClaraIndex.load(tmp_path / "kb", without)
    assert stage2.retriever().name == "minilm"  # no query reasoner: MiniLM keys
    with pytest.raises(ValueError, match="needs a model with a query reasoner"):
        ClaraIndex.load(tmp_path / "kb", stage2.model, retriever="clara").search(q)


# --------------------------------------------------------------------------- the serving decoder


@pytest.mark.parametrize("memory_space", ["hidden", "tokens"])
def test_merged_prefix_cached_batched_decoding_answers_like_the_model(memory_space):
    model = served_model(adapters=("encoder", "decoder"), memory_space=memory_space)
    memory, _ = model.compress_documents(corpus(6, seed=3))
    per_q = torch.cat([memory[[0, 1]], memory[[2, 3]], memory[[4, 5]]])
    reference, ids = [], []
    for i, q in enumerate(QUESTIONS):
        reference += model.generate_from_compressed_documents_and_questions([q], per_q[2 * i:2 * i + 2], 10, 2)
        ids.append(model.last_output_ids[0].tolist())
    assert len(set(reference)) == 3
    for merge in (True, False):
        decoder = ServingDecoder(model, merge=merge)
        assert decoder.merged is merge and len(decoder.prefix_ids) > 5
        one = [decoder.generate([q], per_q[2 * i:2 * i + 2], 2, 10) for i, q in enumerate(QUESTIONS)]
        assert [g.texts[0] for g in one] == reference
        assert [g.token_ids[0] for g in one] == [r[:len(g.token_ids[0])] for r, g in zip(ids, one, strict=True)]
        batched = decoder.generate(QUESTIONS, per_q, 2, 10)
        assert batched.texts == reference
    lora = sum("lora_" in n for n, _ in model.lm.named_parameters())
    assert lora > 0 and not any("lora_" in n for n, _ in ServingDecoder(model).lm.named_parameters())
    # a merged copy only when the (GPU's) free memory holds it; otherwise unmerged, the same answers, and said so
    size = sum(p.numel() * p.element_size() for p in model.causal_lm.parameters())
    roomy, tight = ServingDecoder(model, free_bytes=2 * size), ServingDecoder(model, free_bytes=size)
    assert roomy.merged and "merged into a serving copy" in roomy.how
    assert not tight.merged and "unmerged: no room for a merged copy" in tight.how and tight.lm is model.causal_lm
    assert tight.generate(QUESTIONS, per_q, 2, 10).texts == reference
    assert "on cpu" in ServingDecoder(model).how  # a CPU: always merged


# --------------------------------------------------------------------------- large pools


def test_a_pool_of_2000_documents_answers_in_bounded_memory(tmp_path, capsys):
    import resource

    model = served_model(scale=0.1)
    pool = [f"Item {i} is kept in box {i % 97} of shelf {i % 13}." for i in range(2000)]
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answers, top = model.generate_from_questions(QUESTIONS[:2], [pool, pool], max_new_tokens=3, top_k=3)
    assert len(answers) == 2 and top.shape == (2, 3)
    scores, _, _ = model.retrieve(QUESTIONS[:1], [pool[:64]])
    small_scores = model.scores(model.embed_queries(model._encode(QUESTIONS[:1])),
                                model.compress_documents(pool[:64], batch_size=64)[0], 64)
    assert torch.allclose(scores, small_scores, atol=1e-5)  # batched compression: the same scores
    after_pool = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    index = ClaraIndex.build(tmp_path / "kb", model, pool, dtype="float32", keys=(), progress=False)
    assert len(index.chunks) == 2000
    hits = index.search_many(QUESTIONS[:2], 3)
    ref_scores, _, _ = model.retrieve(QUESTIONS[:2], [pool, pool])
    for hs, ref in zip(hits, ref_scores, strict=True):  # the pool's best scores (near-ties may swap rows)
        assert [h.score for h in hs] == pytest.approx(ref.topk(3).values.tolist(), abs=1e-4)
    assert len(index.ask_many(QUESTIONS[:2], 3, max_new_tokens=3)) == 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with capsys.disabled():
        print(f"\n2,000 documents: peak RSS {start / 1024:.0f} MB before, {after_pool / 1024:.0f} MB after "
              f"generate_from_questions, {peak / 1024:.0f} MB after the index (build + ask)")


def test_an_interrupted_add_is_finished_by_resume(tmp_path):
    model = served_model()
    index = ClaraIndex.build(tmp_path / "kb", model, corpus(6, seed=30), keys=(), part_rows=4, progress=False)
    index.add(corpus(4, seed=31), progress=False)
    complete = folder_files(tmp_path / "kb")
    newest = sorted((tmp_path / "kb" / "memory").glob("*.safetensors"))[-1]
    newest.unlink()  # as if the add had been killed before compressing its last part
    (tmp_path / "kb" / "manifest.json").unlink()
    with pytest.raises(IndexFolderError, match="interrupted.*ClaraIndex.resume"):
        ClaraIndex.load(tmp_path / "kb", model)
    resumed = ClaraIndex.resume(tmp_path / "kb", model, progress=False)
    assert folder_files(tmp_path / "kb") == complete and len(resumed.chunks) == len(index.chunks)


def test_an_upstream_checkpoint_serves_an_index_like_its_own_generate_from_questions(tmp_path, shared_dir):
    from clara_lite import ClaraModel

    root = shared_dir / "fixtures" / "upstream_tiny"
    model = ClaraModel.from_pretrained(root / "upstream_ckpt", decoder_model_name=str(root / "tiny_base"))
    pool = ["Ada lives in Paris.", "Bob works as a cook.", "The Nile is long.", "Rome is in Italy.",
            "Tom plays chess.", "Kim writes books."]
    index = ClaraIndex.build(tmp_path / "kb", model, pool, dtype="float32", keys=(), progress=False)
    assert sorted(c.text for c in index.chunks) == sorted(pool)
    texts = [c.text for c in index.chunks]
    answers, top = model.generate_from_questions(QUESTIONS, [texts] * 3, max_new_tokens=6, top_k=2)
    assert [[h.row for h in hs] for hs in index.search_many(QUESTIONS, 2)] == top.tolist()
    assert [a.text for a in index.ask_many(QUESTIONS, 2, max_new_tokens=6)] == answers


def test_a_pdf_skipped_for_want_of_pypdf_says_what_to_install_and_is_added_once_it_is(tmp_path, monkeypatch, capsys):
    from fpdf import FPDF

    from clara_lite import notebook as nb

    drive = tmp_path / "drive"
    pool = drive / "pool"
    pool.mkdir(parents=True)
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, "The bridge is seven meters long.")
    pdf.output(str(pool / "report.pdf"))
    (pool / "notes.txt").write_text("The river is blue.", encoding="utf-8")
    ws = nb.Workspace(drive, nb.save_settings(drive, nb.Settings(run_name="p")))
    model = served_model()
    monkeypatch.setitem(sys.modules, "pypdf", None)  # a runtime without pypdf: `import pypdf` fails
    index = ws.build_index(model, "pool")
    shown = capsys.readouterr().out
    assert "skipped report.pdf: needs pypdf: pip install pypdf" in shown
    assert {c.source for c in index.chunks} == {"notes.txt"}
    monkeypatch.delitem(sys.modules, "pypdf")  # installed now: the next use adds it instead of reusing the gap
    again = ws.build_index(model, "pool")
    assert "Adding the documents skipped before (pypdf is installed now)" in capsys.readouterr().out
    assert {c.source for c in again.chunks} == {"notes.txt", "report.pdf"} and again.info()["skipped"] == []


def test_collapsed_whitespace_positions_hold_two_numbers_per_word_not_one_per_character():
    from clara_lite.serve.documents import _normalized

    rng = random.Random(4)
    text = "".join(rng.choice(["\u00e9t\u00e9", "a", "bc", " ", "\n\n", "\t ", "\u3000", "x."]) for _ in range(5000))
    norm, where = _normalized(text)
    assert norm == " ".join(text.split())
    assert len(where.norm) == len(text.split())  # per word, where one int per character was kept before
    for at, ch in enumerate(norm):
        if ch != " ":
            assert text[where[at]] == ch, at
        else:
            assert text[where[at]].isspace() and not text[where[at] - 1].isspace()


def test_two_jsonl_documents_with_one_source_and_other_texts_are_refused_naming_both_lines(tmp_path):
    docs = tmp_path / "docs.jsonl"
    rows = [{"source": "faq", "text": "Ada lives in Oslo."}, {"source": "faq", "text": "Ada lives in Oslo."},
            {"source": "other", "text": "Bo lives in Rome."}]
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [d.source for d in documents_from(docs)] == ["faq", "other"]  # the same text twice: one document
    docs.write_text(docs.read_text() + json.dumps({"source": "faq", "text": "Ada moved to Lima."}) + "\n")
    with pytest.raises(ValueError, match=r"docs.jsonl:4: source 'faq' is also line 1's, with other text"):
        documents_from(docs)


def test_a_part_damaged_at_the_same_size_is_refused_on_its_first_read(tmp_path):
    model = served_model()
    ClaraIndex.build(tmp_path / "kb", model, corpus(6), keys=(), progress=False)
    index = ClaraIndex.load(tmp_path / "kb", model)
    part = tmp_path / "kb" / index.parts[0].file
    raw = bytearray(part.read_bytes())
    raw[-3] ^= 0x40  # inside the memory vectors: the header, the size and the row ids still fit
    part.write_bytes(bytes(raw))
    damaged = ClaraIndex.load(tmp_path / "kb", model)  # names and sizes check out
    with pytest.raises(IndexFolderError, match=r"is damaged \(its sha256 is not the manifest's\).*--verify"):
        damaged.search(QUESTIONS[0])
    with pytest.raises(IndexFolderError, match="is damaged"):
        damaged.memory_rows([0])
