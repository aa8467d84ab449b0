"""Extraction of real files of every type, and chunking into base-model-token passages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_pipeline_support import TOPICS, make_documents

from clara_lite.cli import main
from clara_lite.pipeline.chunk import ChunkConfig, chunk_id, chunk_pages, load_tokenizer
from clara_lite.pipeline.extract import extract_folder
from clara_lite.pipeline.records import IMAGE_REF, Page, fill_images


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return make_documents(tmp_path_factory.mktemp("docs"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def test_every_type_is_extracted_with_source_page_title_and_images(docs, tmp_path):
    result = extract_folder(docs, images_dir=tmp_path / "images")
    assert result.extractor == "light extractors (docling not installed)"
    pages = {(p.source, p.page): p for p in result.pages}
    assert [n for s, n in pages if s == "science_notes.pdf"] == [1, 2, 3]  # one row per PDF page
    assert "Mount Etna" in pages["science_notes.pdf", 1].text and "Ariane 5" in pages["science_notes.pdf", 3].text
    assert pages["science_notes.pdf", 1].title == "Science Notes"  # from the PDF metadata
    assert [i["name"] for i in pages["science_notes.pdf", 2].images] == ["I1.png"]  # the image is on page 2
    # one placeholder per image, where the format says (else at the end of the page)
    assert {k: p.text.count(IMAGE_REF) for k, p in pages.items()} == {k: len(p.images) for k, p in pages.items()}
    assert pages["science_notes.pdf", 2].text.endswith("summer.\n\n" + IMAGE_REF)
    saved = [i["path"] for p in result.pages for i in p.images if i.get("path", "").startswith(str(tmp_path))]
    assert len(saved) == 3 and all(Path(s).is_file() for s in saved)  # the PDF's, DOCX's and PPTX's images
    assert pages["coffee.docx", None].title == "Coffee history" and "Kaldi" in pages["coffee.docx", None].text
    assert len(pages["coffee.docx", None].images) == 1
    assert f"their effect.\n\n{IMAGE_REF}\n\nArabica" in pages["coffee.docx", None].text  # where the picture is
    assert "Irving Morrow" in pages["lectures.pptx", 1].text and "Steinitz" in pages["lectures.pptx", 2].text
    assert len(pages["lectures.pptx", 1].images) == 1 and not pages["lectures.pptx", 2].images
    html = pages["rivers.html", None]
    assert html.title == "Rivers of Europe" and "Black Forest" in html.text
    assert "not text" not in html.text and "color" not in html.text  # script and style dropped
    assert html.images[0]["alt"] == "map" and html.images[0]["path"].endswith("figure.png")
    md = pages["glass.md", None]
    assert md.title == "Making glass" and "#" not in md.text and "Pilkington" in md.text
    assert fill_images(md.text, ["[Image: a furnace]"]).endswith("in the 1950s.\n\n[Image: a furnace]")
    assert IMAGE_REF not in fill_images(md.text) and fill_images(md.text).endswith("in the 1950s.")
    # figure.png is shown by the HTML and Markdown files, so it is not a page of its own too
    assert ("figure.png", None) not in pages
    skipped = {s.source: s.reason for s in result.skipped}
    assert set(skipped) == {"broken.pdf", "secret.pdf"}
    assert skipped["secret.pdf"] == "password-protected PDF" and "cannot read" in skipped["broken.pdf"]
    assert result.ignored == ["data.xyz"]


def test_a_lone_image_beside_the_documents_is_recorded(tmp_path):
    from test_pipeline_support import png_bytes

    (tmp_path / "chart.png").write_bytes(png_bytes())
    (tmp_path / "notes.txt").write_text(TOPICS["bees"])
    result = extract_folder(tmp_path)
    image = next(p for p in result.pages if p.source == "chart.png")
    assert image.text == IMAGE_REF and image.images[0]["name"] == "chart.png"  # its description will be its text


def test_cli_extract_lists_skipped_files_and_the_extractor(docs, tmp_path, capsys):
    out = tmp_path / "raw.jsonl"
    assert main(["data", "extract", "--input", str(docs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "extractor: light extractors (docling not installed)" in printed
    assert "broken.pdf: cannot read" in printed and "secret.pdf: password-protected PDF" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"source", "page", "title", "text", "images"} <= set(rows[0])
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert [s["source"] for s in report["skipped"]] == ["broken.pdf", "secret.pdf"]


def test_docling_is_required_only_when_asked(docs, tmp_path, caplog):
    with pytest.raises(ValueError, match="pip install docling"):
        extract_folder(docs, use_docling="yes")
    with caplog.at_level(logging.ERROR, logger="clara_lite"):  # the CLI: a message with the fix, exit 2
        assert main(["data", "extract", "--input", str(docs), "--out", str(tmp_path / "p.jsonl"), "--docling",
                     "yes"]) == 2
    assert "--docling auto" in caplog.text
    assert extract_folder(docs, use_docling="no").extractor == "light extractors (docling disabled)"


# --------------------------------------------------------------------------- chunking


def _long_page(n_paragraphs: int = 6) -> Page:
    return Page("book.txt", None, "Book", "\n\n".join(list(TOPICS.values())[:n_paragraphs]))


def test_passages_fit_the_token_budget_and_break_at_sentences(tokenizer):
    config = ChunkConfig(doc_max_length=48, overlap=0)
    chunks = chunk_pages([_long_page(8)], tokenizer, config)
    assert len(chunks) > 4
    for chunk in chunks:
        n = len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"])
        assert n == chunk.n_tokens and n <= 48 + 2  # joining may add a token where two pieces meet
        assert chunk.text.rstrip()[-1] in ".!?"  # whole sentences
    joined = " ".join(c.text.replace("\n", " ") for c in chunks)
    assert all(" ".join(t.split()) in joined for t in TOPICS.values())  # nothing lost without overlap


def test_overlap_repeats_the_last_sentence_and_ids_are_stable(tokenizer):
    config = ChunkConfig(doc_max_length=64, overlap=24)
    first = chunk_pages([_long_page()], tokenizer, config)
    again = chunk_pages([_long_page()], tokenizer, config)
    assert [c.id for c in first] == [c.id for c in again] and len({c.id for c in first}) == len(first)
    shared = 0
    for a, b in zip(first, first[1:], strict=False):
        last_sentence = a.text.split(". ")[-1].split("\n")[-1]
        shared += b.text.startswith(last_sentence)
    assert shared >= len(first) // 2
    assert chunk_id("a.pdf", 1, 0, "x") != chunk_id("a.pdf", 1, 0, "y") != chunk_id("a.pdf", 2, 0, "y")


def test_short_slides_share_a_passage_and_a_sentence_longer_than_the_budget_is_cut(tokenizer):
    slides = [Page("deck.pptx", n, "Deck", f"Slide {n} says fact number {n} is true.") for n in range(1, 5)]
    chunks = chunk_pages(slides, tokenizer, ChunkConfig(doc_max_length=64, overlap=0))
    assert len(chunks) == 1 and chunks[0].page == 1 and "fact number 4" in chunks[0].text
    endless = Page("wall.txt", None, "Wall", " ".join(["word"] * 400))
    cut = chunk_pages([endless], tokenizer, ChunkConfig(doc_max_length=32, overlap=0))
    assert len(cut) > 5 and all(c.n_tokens <= 32 for c in cut)
