"""What a CLI user sees for the issue-12 cases, in real processes: one error message naming the file,
line, field or option, what is wrong and what to do; a non-zero exit; never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import TINY_RUN_FLAGS, tiny_model
from synthetic_data import write_run_data

from clara_lite.model.saving import save_model


def test_each_case_is_one_message_and_a_non_zero_exit(tmp_path):
    data = write_run_data(tmp_path / "data")
    rows = (data / "stage2.jsonl").read_text().splitlines()
    bad = json.loads(rows[2])
    bad["docs"][1] = "Ada \ud800 lives"
    (data / "surrogate.jsonl").write_text("\n".join([*rows[:2], json.dumps(bad), *rows[3:]]) + "\n")
    model = tmp_path / "model"
    save_model(tiny_model(doc_max_length=16, compr_rate=4, lora_r=4), model)
    config = json.loads((model / "clara_config.json").read_text())
    (model / "clara_config.json").write_text(json.dumps({**config, "doc_max_length": "16"}))
    (tmp_path / "docs.jsonl").write_text('{"doc": "Ada lives in Oslo."}\n')
    train = ["train", "--stage", "stage1", "--run-dir", "RUN", *TINY_RUN_FLAGS]  # each case its own run folder
    cases = {  # name: (arguments, words the message must hold)
        "option": ([*train, "--data", str(data / "stage1.jsonl"), "--lora-dropout", "5"],
                   ["lora_dropout (--lora-dropout) must be a finite number >= 0 and < 1, got 5.0"]),
        "non-finite option": ([*train, "--data", str(data / "stage1.jsonl"), "--lr", "nan"], ["lr (--lr)", "got nan"]),
        "folder as data": ([*train, "--data", str(data)], ["is a folder, not a file", "--data-dir"]),
        "init-from": ([*train[:2], "stage2", *train[3:], "--data", str(data / "stage2.jsonl"), "--init-from",
                       str(tmp_path / "nowhere")], ["--init-from", "does not exist"]),
        "bad row": ([*train[:2], "stage2", *train[3:], "--data", str(data / "surrogate.jsonl"), "--init-from",
                     str(tmp_path / "model")], [f"{data / 'surrogate.jsonl'}:3: field 'docs[1]': an unpaired"]),
        "config type": (["ask", "--model", str(model), "--question", "q", "--docs", str(tmp_path / "docs.jsonl")],
                        [f"{model / 'clara_config.json'}: field 'doc_max_length' must be an integer"]),
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "clara_lite.cli",
                                     *(str(tmp_path / name.replace(" ", "-")) if a == "RUN" else a for a in args)],
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env={**os.environ, "CI": "true"})
             for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode != 0 and "Traceback" not in out, (name, out)
        assert out.count(" ERROR ") == 1, (name, out)
        error = out[out.index(" ERROR "):]
        assert all(words in error for words in cases[name][1]), (name, out)
    assert not any((tmp_path / name.replace(" ", "-")).exists() for name in cases)  # refused: nothing written


def test_train_out_of_memory_prints_the_advice_and_exits_4(tmp_path, caplog):
    """Every forward pass raises torch's own OutOfMemoryError (a real global forward hook, as a full GPU would):
    the trainer halves the micro-batch down to one row, then the CLI logs the advice and exits 4."""
    import logging

    import torch

    from clara_lite.cli import main
    from clara_lite.model.modeling import ClaraModel

    data = write_run_data(tmp_path / "data")

    def full_gpu(module, _args):
        if isinstance(module, ClaraModel):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(full_gpu)
    try:
        with caplog.at_level(logging.ERROR, logger="clara_lite"):
            code = main(["train", "--stage", "stage1", "--run-dir", str(tmp_path / "run"), *TINY_RUN_FLAGS, "--data",
                         str(data / "stage1.jsonl"), "--max-steps", "2", "--batch-size", "2"])
    finally:
        handle.remove()
    assert code == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "4bit" in errors[0].lower().replace("-", ""), errors
    assert not (tmp_path / "run" / "stage1" / "final").exists()


def test_errors_of_other_libraries_and_unchecked_input_are_one_message_and_debug_shows_the_traceback(
        tmp_path, caplog):
    """Issue 24, Low 10: the cases that printed a traceback, in-process through clara-lite's main()."""
    import logging
    import zipfile

    from test_index import served_model

    from clara_lite.cli import main
    from clara_lite.serve.index import ClaraIndex

    model = served_model()
    model.save_pretrained(tmp_path / "model")
    m = str(tmp_path / "model")
    kb = tmp_path / "kb"
    index = ClaraIndex.build(kb, model, ["Ada lives in Oslo.", "Bo lives in Rome."], keys=(), progress=False)
    part = kb / index.parts[0].file
    listed = tmp_path / "listed"
    ClaraIndex.build(listed, model, ["Cy lives in Lima."], keys=(), progress=False)
    (listed / "index.json").write_text("[1, 2]")
    empty = ClaraIndex.build(tmp_path / "empty", model, ["Dee."], keys=(), progress=False)
    empty.remove(["text:" + __import__("hashlib").sha1(b"Dee.").hexdigest()[:12]])
    typed = tmp_path / "typed.jsonl"
    typed.write_text('{"context": 1, "question": "q", "answers": {"text": 5, "answer_start": [0]}}\n')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    bad_zip = tmp_path / "docs.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("docs/a.txt", "Bees dance. " * 50)
    raw = bytearray(bad_zip.read_bytes())
    raw[raw.index(b"Bees") + 5] ^= 0xFF  # the data no longer matches its CRC
    bad_zip.write_bytes(bytes(raw))

    ask = ["ask", "--model", m, "--top-k", "1", "--max-new-tokens", "2"]
    cases = {  # name: (arguments, before the run, words the one message must hold)
        "index.json not an object": ([*ask, "--index", str(listed), "q"], None, [str(listed / "index.json"),
                                                                                "not an index's object"]),
        "junk part of the right size": ([*ask, "--index", str(kb), "q"], lambda: part.write_bytes(
            b"\x00" * part.stat().st_size), [str(part), "--verify"]),
        "bm25 on an empty index": ([*ask, "--index", str(tmp_path / "empty"), "--retriever", "bm25", "q"], None,
                                   ["has no chunks", "index add"]),
        "convert, wrong types": (["data", "convert", "--input", str(typed), "--out-dir", str(tmp_path / "o1")],
                                 None, ["typed.jsonl", "record 1", "--format"]),
        "convert, deep nesting": (["data", "convert", "--input", str(deep), "--out-dir", str(tmp_path / "o2")],
                                  None, ["RecursionError", "What to do"]),
        "a missing input file": (["data", "convert", "--input", str(tmp_path / "none.jsonl"), "--out-dir",
                           str(tmp_path / "o3")], None, ["none.jsonl"]),
    }
    for name, (args, before, words) in cases.items():
        if before is not None:
            before()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="clara_lite"):
            assert main(args) == 2, name
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and not errors[0].exc_info, (name, caplog.text)
        assert all(w in errors[0].getMessage() for w in words), (name, errors[0].getMessage())

    from clara_lite.pipeline.fetch import unpack
    with pytest.raises(ValueError, match="a damaged archive .*download it again") as err:
        unpack(bad_zip, tmp_path / "unpacked")
    assert str(bad_zip) in str(err.value) and not (tmp_path / "unpacked").exists()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="clara_lite"):
        assert main(["--debug", *cases["convert, deep nesting"][0]]) == 2
    assert "Traceback" in caplog.text and "RecursionError" in caplog.text
