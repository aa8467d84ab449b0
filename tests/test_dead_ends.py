"""Each dead end a user arriving from the seeds met ends in a message that names the next command."""

from __future__ import annotations

import logging

import pytest
from helpers import tiny_model
from test_pipeline_support import TOPICS, make_documents

from clara_lite import ClaraModel
from clara_lite.serve.ask import read_docs


def test_a_model_without_a_query_reasoner_points_at_reading_or_the_index():
    model = tiny_model(doc_max_length=16, compr_rate=4)  # encoder + decoder: a stage1/stage2 model
    with pytest.raises(ValueError) as err:
        model.generate_from_questions(["Where does Ada live?"], [["Ada lives in Oslo.", "Bo lives in Rome."]],
                                      max_new_tokens=2)
    text = str(err.value)
    assert "no query reasoner" in text and "clara-lite index build" in text and "--docs" in text


def test_a_stage_or_run_folder_names_the_models_inside(tmp_path):
    run = tmp_path / "run"
    tiny_model(doc_max_length=16, compr_rate=4).save_pretrained(run / "stage2" / "final")
    with pytest.raises(FileNotFoundError, match=f"the model inside: {run / 'stage2' / 'final'}$"):
        ClaraModel.from_pretrained(run / "stage2")
    with pytest.raises(FileNotFoundError, match=f"the model inside: {run / 'stage2' / 'final'}$"):
        ClaraModel.from_pretrained(run)
    (run / "stage3").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        ClaraModel.from_pretrained(run / "stage3")  # nothing trained there yet: no hint to give
    assert "inside" not in str(err.value)


def test_ask_docs_reads_a_folder_of_pdfs_and_office_files(tmp_path, caplog):
    folder = make_documents(tmp_path / "docs")
    with caplog.at_level(logging.WARNING):
        docs = read_docs(folder)
    text = "\n".join(docs)
    for topic in ("volcanoes", "bees", "coffee", "bridges", "rivers", "glass"):  # PDF, DOCX, PPTX, HTML, Markdown
        assert TOPICS[topic].split(". ")[0] in " ".join(text.split()), topic
    assert "skipped broken.pdf" in caplog.text and "skipped secret.pdf" in caplog.text
