"""Files that are not what they claim (issue 12, defect 9): a pickle carrying code, a config with
wrong types, a symlink out of the input folder, duplicate chunk ids. Each is refused or skipped with
one message naming the file; nothing is run, read or mispaired."""

from __future__ import annotations

import json
import logging
import os

import torch
from helpers import tiny_model

from clara_lite import ClaraModel
from clara_lite.cli import main
from clara_lite.model.saving import save_model
from clara_lite.pipeline.extract import extract_folder
from clara_lite.serve.index import ClaraIndex


class Payload:
    """What a hostile .pth carries: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _ask(model, tmp_path) -> list[str]:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"doc": "Ada lives in Oslo."}\n')
    return ["ask", "--model", str(model), "--question", "Where does Ada live?", "--docs", str(docs)]


def test_a_pickle_with_code_is_refused_as_untrusted_without_torchs_advice(tmp_path, caplog):
    folder, marker = tmp_path / "upstream", tmp_path / "pwned"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"decoder_model_name": "tiny-random", "doc_max_length": 16,
                                                    "compr_rate": 4, "training_stage": "stage1"}))
    torch.save({"model.embed_tokens.weight": Payload(marker)}, folder / "decoder_first_last_layers.pth")
    torch.save({"encoder_adapter": {}}, folder / "adapters.pth")
    with caplog.at_level(logging.ERROR):
        assert main(_ask(folder, tmp_path)) == 2
    assert not marker.exists()  # nothing ran
    assert f"{folder / 'decoder_first_last_layers.pth'} is not trusted" in caplog.text
    assert "posix.system" in caplog.text and "weights_only=False" not in caplog.text


def test_wrong_types_in_clara_config_name_the_file_and_field(tmp_path, caplog):
    folder = tmp_path / "model"
    save_model(tiny_model(doc_max_length=16, compr_rate=4, lora_r=4), folder)
    config = json.loads((folder / "clara_config.json").read_text())
    for field, value, words in (("compr_rate", "4", 'must be an integer, got "4"'),
                                ("sep", 1, "must be true or false, got 1"),
                                ("lora_dropout", None, "must be a number, got null")):
        (folder / "clara_config.json").write_text(json.dumps({**config, field: value}))
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(_ask(folder, tmp_path)) == 2
        assert f"{folder / 'clara_config.json'}: field '{field}' {words}" in caplog.text, caplog.text
    (folder / "clara_config.json").write_text(json.dumps(config))
    assert ClaraModel.from_pretrained(folder).config.compr_rate == 4


def test_extract_does_not_follow_links_out_of_the_input_folder(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the password file")
    picture = tmp_path / "private.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("Bees dance to tell where flowers are.")
    (docs / "passwd.txt").symlink_to(secret)
    (docs / "page.md").write_text("# Page\n\nText.\n\n![p](../private.png)\n")
    result = extract_folder(docs, use_docling="no")
    texts = " ".join(p.text for p in result.pages)
    assert "Bees dance" in texts and "password" not in texts
    assert [(s.source, s.reason.split(",")[0]) for s in result.skipped] == [("passwd.txt", f"a link to {secret}")]
    md = next(p for p in result.pages if p.source == "page.md")
    assert md.images and "path" not in md.images[0]  # the image outside is never read, nor sent on


def _hostile_folder(tmp_path):
    """docs/: a good file, a link to a secret outside, a file whose name is Latin-1 (not UTF-8)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the password file")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("Bees dance to tell where flowers are.")
    (docs / "passwd.txt").symlink_to(secret)
    (docs / "sub").mkdir()
    (docs / "sub" / "up").symlink_to(tmp_path)  # a link to a folder outside: the files seen through it
    latin1 = os.fsencode(str(docs)) + b"/caf\xe9.txt"
    with open(latin1, "w") as f:
        f.write("A cafe named in Latin-1.")
    return docs, secret


def test_one_check_decides_what_a_document_path_may_be_for_extract_and_the_index(tmp_path, caplog):
    docs, secret = _hostile_folder(tmp_path)
    result = extract_folder(docs, use_docling="no")
    assert "Bees dance" in " ".join(p.text for p in result.pages)
    reasons = {s.source: s.reason for s in result.skipped}
    assert reasons["passwd.txt"].startswith(f"a link to {secret}") and "not valid UTF-8" in reasons["caf\\xe9.txt"]
    json.dumps(result.report(), ensure_ascii=False).encode("utf-8")  # the report can be written

    model = tiny_model(doc_max_length=24, compr_rate=6)
    with caplog.at_level(logging.WARNING):
        index = ClaraIndex.build(tmp_path / "kb", model, docs, keys=(), progress=False)
    assert {c.source for c in index.chunks} == {"notes.txt"}
    assert "password" not in (tmp_path / "kb" / "chunks.jsonl").read_text()
    skipped = {s["source"]: s["reason"] for s in index.meta["sources"]["skipped"]}
    assert {"passwd.txt", "caf\\xe9.txt"} <= set(skipped) and "caf\\xe9.txt" in caplog.text
    assert index.add(docs, progress=False)["unchanged"] == 1  # add reads the folder through the same check


def test_duplicate_chunk_ids_are_refused_instead_of_mispairing_questions(tmp_path, caplog):
    synth = tmp_path / "synth.jsonl"
    rows = [{"id": "c1", "source": "a.txt", "page": None, "title": "A", "doc": "Ada lives in Oslo.",
             "summary": "Ada, Oslo.", "qa": [{"question": "Where does Ada live?", "answer": "Oslo"}]},
            {"id": "c2", "source": "c.txt", "page": None, "title": "C", "doc": "Cy lives in Lima.",
             "summary": "Cy, Lima.", "qa": [{"question": "Where does Cy live?", "answer": "Lima"}]},
            {"id": "c1", "source": "b.txt", "page": None, "title": "B", "doc": "Bo lives in Rome.",
             "summary": "Bo, Rome.", "qa": [{"question": "Where does Bo live?", "answer": "Rome"}]}]
    synth.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.ERROR):
        code = main(["data", "split", "--input", str(synth), "--out-dir", str(tmp_path / "out"), "--k", "2",
                     "--strategy", "random"])
    assert code == 2 and not (tmp_path / "out").exists()
    assert f"{synth}: row 3 has chunk id 'c1', which row 1 uses for another document" in caplog.text
    synth.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + '{"id": "c3", "doc": \n')
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["data", "split", "--input", str(synth), "--out-dir", str(tmp_path / "out")]) == 2
    assert f"{synth}:3: not a JSON row" in caplog.text
