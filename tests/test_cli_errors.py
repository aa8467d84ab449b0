"""What a CLI user sees for the issue-12 cases, in real processes: one error message naming the file,
line, field or option, what is wrong and what to do; a non-zero exit; never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
