"""Hub ids wherever a path is accepted: an official-layout CLaRa checkpoint resolved offline from a
Hugging Face cache (the upstream fixture copied in as apple/CLaRa-7B-Instruct/compression-16), every
quantization spelling loading in 4-bit (or 8-bit) with bitsandbytes on CPU, the token never shown.

The loads run in a child process: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from helpers import lay_out_cache

from clara_lite.core.config import ClaraConfig, normalize_quantization
from clara_lite.model import hub

SECRET = "hf_NOT_A_REAL_TOKEN_but_secret_1234567890"
ROOT = Path(__file__).resolve().parents[1]


SCRIPT = r'''
import json, sys, torch
from safetensors.torch import load_file
from clara_lite import ClaraModel
from clara_lite.model.size import model_params_b
from clara_lite.model.hub import HubError

fixture, out = sys.argv[1], {}
ref = load_file(f"{fixture}/reference/generate_from_questions.safetensors")
inputs = json.load(open(f"{fixture}/reference_inputs.json"))
docs = inputs["generate_from_questions_documents"]

m = ClaraModel.from_pretrained("apple/CLaRa-7B-Instruct", subfolder="compression-16")
_, topk = m.generate_from_questions(inputs["questions"], docs, max_new_tokens=8)
out["full"] = {"topk": topk.tolist(), "ids_equal": torch.equal(m.last_output_ids.cpu(), ref["output_ids"]),
               "dtype": str(next(m.causal_lm.parameters()).dtype), "quantization": m.config.quantization}
one = ClaraModel.from_pretrained("apple/CLaRa-7B-Instruct/compression-16")
out["one_string_equal"] = torch.equal(one.compress_documents(docs[0])[0], m.compress_documents(docs[0])[0])
out["params_b"] = model_params_b("apple/CLaRa-7B-Instruct", "compression-16")

import bitsandbytes as bnb
from peft.tuners.tuners_utils import BaseTunerLayer
for spelling in sys.argv[2].split(","):
    q = ClaraModel.from_pretrained("apple/CLaRa-7B-Instruct", subfolder="compression-16", quantization=spelling)
    layers = [mod.base_layer for mod in q.lm.modules() if isinstance(mod, BaseTunerLayer)]
    answers, topk = q.generate_from_questions(inputs["questions"], docs, max_new_tokens=4)
    memory, _ = q.compress_documents(docs[0])
    full, _ = m.compress_documents(docs[0])
    out[spelling] = {
        "config": q.config.quantization, "layers": len(layers),
        "types": sorted({type(l).__name__ for l in layers}),
        "quant_types": sorted({getattr(l.weight, "quant_type", "-") for l in layers}),
        "answers": len(answers), "new_tokens": q.last_output_ids.shape[1],
        "memory_rel_err": ((memory - full).norm() / full.norm()).item(),
    }
for bad in ("fp4x", "int3"):
    try:
        ClaraModel.from_pretrained("apple/CLaRa-7B-Instruct", subfolder="compression-16", quantization=bad)
        out[bad] = "loaded"
    except ValueError as err:
        out[bad] = str(err)
for name, kwargs in (("no_subfolder", {}), ("not_cached", {"subfolder": "compression-128"})):
    try:
        ClaraModel.from_pretrained("apple/CLaRa-7B-E2E" if name == "not_cached" else "apple/CLaRa-7B-Instruct",
                                   **kwargs)
        out[name] = "loaded"
    except HubError as err:
        out[name] = str(err)
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def offline_loads(tmp_path_factory, shared_dir):
    """Run the loads once, offline, against a cache in a temp dir; (results, full output)."""
    fixture = shared_dir / "fixtures" / "upstream_tiny"
    cache = tmp_path_factory.mktemp("hf") / "hub"
    lay_out_cache(cache, fixture)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET,
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HF_HOME", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(fixture), "4bit,nf4,int4,NF4,8bit,int8"],
                          capture_output=True, text=True, env=env, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), text


def test_a_hub_id_with_subfolder_resolves_offline_and_reproduces_upstream(offline_loads):
    out, _ = offline_loads
    assert out["full"] == {"topk": [[0, 2], [0, 1]], "ids_equal": True, "dtype": "torch.float32",
                           "quantization": None}  # CPU: fp32, full precision, the upstream outputs exactly
    assert out["one_string_equal"] is True  # "org/name/subfolder" is the same model
    assert out["params_b"] == pytest.approx(0.0032, abs=1e-4)  # the base's size, from its config.json


@pytest.mark.parametrize("spelling", ["4bit", "nf4", "int4", "NF4"])
def test_every_4bit_spelling_loads_nf4_with_bitsandbytes(offline_loads, spelling):
    got = offline_loads[0][spelling]
    assert got["config"] == "4bit" and got["layers"] == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    assert got["types"] == ["Linear4bit"] and got["quant_types"] == ["nf4"]
    assert got["answers"] == 2 and 1 <= got["new_tokens"] <= 4
    assert 0 < got["memory_rel_err"] < 0.5  # quantized: close to the full-precision memory, not equal


@pytest.mark.parametrize("spelling", ["8bit", "int8"])
def test_8bit_spellings_load_8bit(offline_loads, spelling):
    got = offline_loads[0][spelling]
    assert got["config"] == "8bit" and got["types"] == ["Linear8bitLt"] and got["answers"] == 2


def test_unknown_quantization_is_refused_and_hub_errors_say_what_to_do(offline_loads):
    out, text = offline_loads
    for bad in ("fp4x", "int3"):
        assert out[bad].startswith(f"Unknown quantization '{bad}'") and "'nf4'" in out[bad]
    assert "compression-16" in out["no_subfolder"] and "subfolder=" in out["no_subfolder"]
    assert "not in the Hugging Face cache" in out["not_cached"] and "apple/CLaRa-7B-E2E" in out["not_cached"]
    assert SECRET not in text  # the token reached the Hub client only


def test_quantization_names_are_normalized_everywhere():
    assert [normalize_quantization(n) for n in ("4bit", "nf4", "INT4", "8bit", "int8", "no", "none", None, "auto")] \
        == ["4bit", "4bit", "4bit", "8bit", "8bit", "none", "none", None, None]
    assert ClaraConfig(quantization="nf4").quantization == "4bit"
    with pytest.raises(ValueError, match="Unknown quantization 'gptq'"):
        ClaraConfig(quantization="gptq")
    from clara_lite.cli import build_parser

    args = build_parser().parse_args(["train", "--stage", "stage1", "--run-dir", "r", "--quantization", "int4"])
    assert ClaraConfig(quantization=args.quantization).quantization == "4bit"


def test_hub_paths_and_official_ids(tmp_path):
    assert hub.official_id("E2E", 128) == ("apple/CLaRa-7B-E2E", "compression-128")
    assert hub.official_id("base", 16) == ("apple/CLaRa-7B-Base", "compression-16")
    with pytest.raises(ValueError, match="compression"):
        hub.official_id("instruct", 32)
    assert hub.split_hub_path("apple/CLaRa-7B-Instruct/compression-16") == ("apple/CLaRa-7B-Instruct",
                                                                           "compression-16")
    assert hub.split_hub_path("apple/CLaRa-7B-Instruct", "compression-16") == ("apple/CLaRa-7B-Instruct",
                                                                             "compression-16")
    local = tmp_path / "runs" / "final"
    local.mkdir(parents=True)
    assert hub.split_hub_path(str(local)) is None and hub.split_hub_path("./runs/x") is None


def test_token_from_the_environment_then_colab_secrets(monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # no token file
    secrets = types.ModuleType("google.colab.userdata")
    secrets.get = {"HF_TOKEN": "from-colab-secrets"}.__getitem__
    colab = types.ModuleType("google.colab")
    colab.userdata = secrets
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", secrets)
    assert hub.hub_token() == "from-colab-secrets"
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert hub.hub_token() == "from-env"
    monkeypatch.delenv("HF_TOKEN")
    secrets.get = {}.__getitem__  # the secret is not there (KeyError, like SecretNotFoundError)
    assert hub.hub_token() in (None, "")
