"""Rows that used to pass validation and then stop training mid-run (issue 12, defect 5; 9: absurd
JSON, a 50 MB document): `data validate` and train's pre-flight name each one's file:line and the
option to change, and no step runs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from helpers import TINY_RUN_FLAGS, tiny_model
from synthetic_data import write_run_data

from clara_lite.cli import main
from clara_lite.model.inputs import encode_texts
from clara_lite.model.saving import save_model

TRAIN = ["--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--log-steps", "1"]
LONG_QUESTION = "Where does she live, " + "and what about the river and the hills " * 40 + "?"


def _rows(data_dir) -> list[str]:
    return (data_dir / "stage2.jsonl").read_text().splitlines()


def _with(data_dir, name: str, line: int, text: str):
    """stage2.jsonl with its ``line`` (1-based) replaced by ``text``."""
    rows = _rows(data_dir)
    rows[line - 1] = text
    path = data_dir / f"{name}.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _edit(data_dir, line: int, **fields) -> str:
    return json.dumps({**json.loads(_rows(data_dir)[line - 1]), **fields})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_run_data(tmp_path_factory.mktemp("data"))


def _cases(data_dir) -> dict:
    """name -> (file, line, field, words the message must hold, extra CLI options)."""
    first = json.loads(_rows(data_dir)[0])
    return {
        "fewer docs": (_with(data_dir, "fewer", 5, _edit(data_dir, 5, docs=first["docs"][:3], pos_index=[0])), 5,
                       "docs", "3 docs, most rows have 4", []),
        "surrogate": (_with(data_dir, "surrogate", 3, _edit(data_dir, 3, docs=["Ada \ud800 lives"] + first["docs"][1:])),
                      3, "docs[0]", "unpaired surrogate", []),
        "memory token": (_with(data_dir, "mem", 7, _edit(data_dir, 7, question="What is <MEM0> about?")), 7,
                         "question", "'<MEM0>', a token clara_lite reserves", []),
        "2000 docs": (_with(data_dir, "many", 2, _edit(data_dir, 2, docs=[f"doc {i}" for i in range(2000)])), 2,
                      "docs", "2000 docs, most rows have 4", []),
        "doc length": (data_dir / "stage2.jsonl", 1, "docs", "more than the decoder's max_decoder_length 1024 holds",
                       ["--doc-max-length", "100000"]),
        "nesting": (_with(data_dir, "deep", 4, "[" * 100_000 + "]" * 100_000), 4, "<row>", "nested too deeply", []),
        "huge number": (_with(data_dir, "digits", 6, '{"question": "q", "docs": ["a"], "gold_answer": "b", '
                                                     '"pos_index": [' + "9" * 5000 + "]}"), 6, "<row>",
                        "Exceeds the limit (4300 digits)", []),
    }


def test_data_validate_names_each_hostile_row(data_dir, capsys):
    for name, (path, line, field, words, extra) in _cases(data_dir).items():
        code = main(["data", "validate", str(path), "--stage", "stage2", *extra])
        out = capsys.readouterr().out
        assert code == 1, name
        assert any(f"{path}:{line}: field '{field}'" in row and words in row for row in out.splitlines()), (name, out)


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    """A saved model to start stage2 from (--init-from), its decoder prompt cut at 128 tokens."""
    folder = tmp_path_factory.mktemp("start") / "model"
    save_model(tiny_model(doc_max_length=16, compr_rate=4, lora_r=4, generation_top_k=2, max_decoder_length=128),
               folder)
    return folder


def test_train_preflight_refuses_each_before_a_step(data_dir, tmp_path, start_model, caplog):
    for name, (path, line, field, words, extra) in _cases(data_dir).items():
        run = tmp_path / name.replace(" ", "-")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            code = main(["train", "--stage", "stage2", "--run-dir", str(run), "--data", str(path), "--init-from",
                         str(start_model), *TINY_RUN_FLAGS, *TRAIN, *extra])
        assert code == 2, (name, caplog.text)
        assert f"{path}:{line}: field '{field}'" in caplog.text and words in caplog.text, (name, caplog.text)
        assert "step 1/" not in caplog.text and not (run / "stage2").exists(), name  # refused before any step


def test_a_question_that_fills_the_decoder_is_found_with_the_tokenizer(data_dir, tmp_path, start_model, capsys,
                                                                       caplog):
    path = _with(data_dir, "long", 9, _edit(data_dir, 9, question=LONG_QUESTION))
    options = ["--doc-max-length", "16", "--compr-rate", "4", "--max-decoder-length", "128"]
    assert main(["data", "validate", str(path), "--stage", "stage2", *options]) == 0  # in characters it fits...
    capsys.readouterr()
    assert main(["data", "validate", str(path), "--stage", "stage2", *options, "--base", "tiny-random"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:9: field 'question': the decoder prompt is" in out and "max_decoder_length is 128" in out
    assert "raise --max-decoder-length" in out
    with caplog.at_level(logging.INFO):  # ...and train measures it with the model's own tokenizer
        code = main(["train", "--stage", "stage2", "--run-dir", str(tmp_path / "run"), "--data", str(path),
                     "--init-from", str(start_model), *TINY_RUN_FLAGS, *TRAIN, "--max-decoder-length", "128"])
    assert code == 2 and f"{path}:9: field 'question': the decoder prompt is" in caplog.text
    assert "step 1/" not in caplog.text


def test_a_50_mb_document_is_read_only_as_far_as_it_is_kept(tmp_path):
    model = tiny_model(doc_max_length=16, compr_rate=4)
    text = "The river runs past the old mill and on to the sea. " * 20_000  # 1 MB
    got = encode_texts(model.tokenizer, model.tokens, model.config, [text])["input_ids"][0]
    whole = model.tokenizer([f"<ENC>{model.tokens.bos}{text}{model.tokens.eos}"], truncation=True, max_length=19,
                            add_special_tokens=False)["input_ids"][0]
    assert got[:19].tolist() == whole  # the cut changes nothing that is kept
    big = tmp_path / "big.jsonl"
    doc = "The river runs past the old mill and on to the sea. " * 1_000_000  # 52 MB
    big.write_text(json.dumps({"data_type": "paraphrase", "answers": ["A mill by a river."], "docs": [doc]}) + "\n")
    script = ("import resource, sys\nfrom clara_lite.cli import main\ncode = main(sys.argv[1:])\n"
              "print('PEAK_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script, "train", "--stage", "stage1", "--run-dir", str(tmp_path / "r"),
                           "--data", str(big), *TINY_RUN_FLAGS, "--max-steps", "1", "--batch-size", "1", "--save-minutes", "0"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    peak = int(proc.stdout.split("PEAK_MB")[1].split()[0])
    print(f"\n50 MB document, one training step: peak RSS {peak} MB")
    assert peak < 2500  # was 6.9 GB: the whole document was tokenized, then cut to 16 tokens
