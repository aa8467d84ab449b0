"""The notebooks as a Colab user runs them, with nothing of this checkout on the path: ``clara-lite bundle``'s
folder is the Drive folder, each notebook's first cell installs the wheel beside it (non-editable, ``--no-deps``,
no index) into a fresh venv, and 00 -> 05 run headless there, from a working folder outside the checkout.

The fresh venv borrows this interpreter's packages except clara_lite (a folder of symlinks on its path): under
``make test-colab`` those are Colab's versions (constraints/colab.txt), so the run shares that venv instead of
installing the colab extra again; the test also asks pip whether the wheel's ``colab`` extra is satisfied there.
It runs in ``make test-colab`` only (``CLARA_WHEEL_TEST=1``): once is enough, and that venv is Colab's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from clara_lite import __version__
from clara_lite.core import source

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["00_setup", "01_data", "02_stage1", "03_stage2", "04_stage3", "05_inference"]
TINY = {"RUN_NAME": "wheel", "BASE_MODEL": "tiny-random", "COMPR_RATE": 4, "DOC_MAX_LENGTH": 16, "TOP_K": 2,
        "LORA_R": 4, "STAGE1_STEPS": 2, "STAGE2_STEPS": 2, "STAGE3_STEPS": 2, "SAVE_STEPS": 2, "LOG_STEPS": 1,
        "MICRO_BATCH_SIZE": 2, "GRAD_ACCUM_STEPS": 1, "LR": 1e-3, "USE_FORM": False}
OVERRIDES = {"00_setup": TINY, "02_stage1": {"CONTINUE_STAGES": True},
             "05_inference": {"MAX_NEW_TOKENS": 4, "EVAL_LIMIT": 4, "OFFICIAL_MODEL": ""}}
WHERE = """
import importlib.util, json, sys
import clara_lite
print("WHERE " + json.dumps({"file": clara_lite.__file__, "path": sys.path,
      "readers": [m for m in ("rank_bm25", "faiss", "pypdf") if importlib.util.find_spec(m) is None]}))
"""

pytestmark = pytest.mark.skipif(os.environ.get("CLARA_WHEEL_TEST") != "1",
                                reason="runs in `make test-colab` (CLARA_WHEEL_TEST=1), on Colab's versions")


def _borrowed(tmp_path: Path) -> Path:
    """This interpreter's packages without clara_lite (nor its editable finder), as a folder of symlinks."""
    folder = tmp_path / "borrowed"
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.startswith(("clara_lite", "__editable__", "_clara_lite")) or entry.suffix == ".pth":
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def _fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "borrowed.pth").write_text(f"{_borrowed(tmp_path)}\n")
    return python


def _kernel(tmp_path: Path, python: Path) -> Path:
    """A Jupyter kernelspec ``wheel-venv`` running the fresh venv's Python."""
    spec = tmp_path / "jupyter" / "kernels" / "wheel-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "wheel venv", "language": "python"}))
    return tmp_path / "jupyter"


def _with(notebook, values: dict):
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
    cell.id = "injected-parameters"
    notebook.cells.insert(index + 1, cell)
    where = nbformat.v4.new_code_cell(WHERE)
    where.id = "where"
    notebook.cells.append(where)
    return notebook


def _text(notebook) -> str:
    return "".join(out.get("text", "") + (f"{out.ename}: {out.evalue}" if out.output_type == "error" else "")
                   for cell in notebook.cells for out in cell.get("outputs", []))


def test_the_bundle_installs_and_runs_00_to_05_outside_the_checkout(tmp_path, monkeypatch):
    drive = tmp_path / "MyDrive" / "clara_lite"  # the bundle folder, dragged into Drive
    source.bundle(drive)
    wheel = drive / f"clara_lite-{__version__}-py3-none-any.whl"
    python = _fresh_venv(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel(tmp_path, python)))
    work = tmp_path / "content"  # the kernel's working folder: not the checkout, not its parent
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "CLARA_", "VIRTUAL_ENV"))}
    env.update(CLARA_DRIVE=str(drive), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    texts = {}
    for name in ORDER:
        started = time.monotonic()
        notebook = _with(nbformat.read(drive / f"{name}.ipynb", as_version=4), OVERRIDES.get(name, {}))
        client = NotebookClient(notebook, kernel_name="wheel-venv", timeout=600,
                                resources={"metadata": {"path": str(work)}})
        texts[name] = _text(client.execute(env=env))
        print(f"{name}: {time.monotonic() - started:.1f} s")
    assert texts["00_setup"].startswith(f"pip install {wheel}\n"), texts["00_setup"][:500]
    assert "pip install" not in texts["01_data"]  # installed in the venv once (Colab: once per runtime)
    for name, text in texts.items():
        where = json.loads(text.split("WHERE ", 1)[1].splitlines()[0])
        assert where["file"].startswith(str(python.parents[1])), (name, where["file"])  # the wheel's copy
        assert not any(p and Path(p).resolve() == ROOT for p in where["path"]), name  # no checkout on sys.path
        assert where["readers"] == [], (name, where["readers"])  # what 05 needs is there
    run = drive / "runs" / "wheel"
    assert (run / "stage3" / "final").is_dir() and "stage3 final checkpoint" in texts["02_stage1"]
    assert "retrieved #1" in texts["05_inference"] and "held-out (4 questions)" in texts["05_inference"]
    assert list((drive / "exports").glob("wheel-*.zip")), texts["05_inference"][-2000:]
    # the wheel's colab extra is satisfied by this venv's versions (Colab's, under make test-colab)
    check = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--dry-run", "-q", f"{wheel}[colab]"],
                           capture_output=True, text=True, env=env, cwd=work)
    assert check.returncode == 0, check.stdout + check.stderr
