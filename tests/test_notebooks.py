"""The notebook suite: generated from notebooks/build.py, thin, and runnable headless end to end.

Headless runs override a notebook's inputs the papermill way: a cell tagged
``injected-parameters`` goes right after the cell tagged ``parameters``. Kernels are this venv's
``python3`` with cwd a temporary folder, ``CLARA_DRIVE=<tmp>/drive`` and ``OMP_NUM_THREADS=1``
(on a busy 2-core machine more threads only spin: a tiny step goes from ~5 s to ~50 ms).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest
from helpers import lay_out_cache
from nbclient import NotebookClient

from clara_lite import notebook as nb
from clara_lite.core.config import ClaraConfig
from clara_lite.train.recipe import find_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ORDER = ["00_setup", "01_data", "02_stage1", "03_stage2", "04_stage3", "05_inference"]
TINY = {"RUN_NAME": "smoke", "BASE_MODEL": "tiny-random", "COMPR_RATE": 4, "DOC_MAX_LENGTH": 16, "TOP_K": 2,
        "LORA_R": 4, "STAGE1_STEPS": 4, "STAGE2_STEPS": 4, "STAGE3_STEPS": 4, "SAVE_STEPS": 2, "LOG_STEPS": 1,
        "MICRO_BATCH_SIZE": 2, "GRAD_ACCUM_STEPS": 1, "LR": 1e-3, "USE_FORM": False}
OVERRIDES = {"00_setup": TINY, "03_stage2": {"CONTINUE_STAGES": True},
             "05_inference": {"MAX_NEW_TOKENS": 4, "EVAL_LIMIT": 4, "OFFICIAL_MODEL": "instruct", "COMPRESSION": 16}}
ALLOWED_IMPORTS = {"clara_lite", "ipywidgets"}  # plus the standard library and IPython.display


def _build_module():
    spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _with_parameters(notebook: nbformat.NotebookNode, values: dict) -> nbformat.NotebookNode:
    """Insert papermill's ``injected-parameters`` cell after the ``parameters`` cell."""
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()),
                                     metadata={"tags": ["injected-parameters"]})
    cell.id = "injected-parameters"
    notebook.cells.insert(index + 1, cell)
    return notebook


def _client(name: str, cwd: Path, overrides: dict | None = None) -> NotebookClient:
    notebook = _with_parameters(_read(name), overrides) if overrides else _read(name)
    return NotebookClient(notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}})


def _env(drive: Path) -> dict:
    return {**os.environ, "CLARA_DRIVE": str(drive), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def venv_kernel(monkeypatch):
    """Kernel 'python3' is this venv's: its kernelspec is searched before the user's."""
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [
        str(Path(sys.prefix) / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")])))


def _text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type == "error":
                parts.append(f"{out.ename}: {out.evalue}")
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "".join(parts)


def _images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for c in notebook.cells for out in c.get("outputs", []))


def _steps(stage_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------- static checks


def test_committed_notebooks_match_their_source():
    build = _build_module()
    assert list(build.NOTEBOOKS) == ORDER
    assert build.stale() == [], "notebooks differ from notebooks/build.py: run python notebooks/build.py"
    assert build.render("02_stage1") == build.render("02_stage1")  # deterministic


def test_every_stage_and_step_names_a_notebook_that_exists():
    from clara_lite.model.stages import STAGES
    from clara_lite.notebook.settings import NOTEBOOKS as NAMED

    assert set(STAGES) <= set(NAMED)  # each stage's "in Colab: ..." hint has a notebook to name
    assert sorted(NAMED.values()) == sorted(ORDER)
    assert all((NOTEBOOKS / f"{name}.ipynb").is_file() for name in NAMED.values())


@pytest.mark.parametrize("name", ORDER)
def test_notebook_is_valid_clean_and_thin(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    assert (notebook.nbformat, notebook.nbformat_minor) >= (4, 5)
    intro = notebook.cells[0]
    assert intro.cell_type == "markdown"
    assert f"https://colab.research.google.com/github/clara-lite/clara_lite/blob/v0.1.0/notebooks/{name}.ipynb" \
        in intro.source  # the badge opens the notebook of this version's tag
    for words in ("**Needs:**", "**Takes:**", "T4", "A100", "smollm2-135m", "qwen2.5-1.5b"):
        assert words in intro.source
    gpu_free = name in ("00_setup", "01_data")  # they train nothing: Colab opens them without a GPU
    assert ("accelerator" in notebook.metadata) is not gpu_free
    assert ("gpuType" in notebook.metadata["colab"]) is not gpu_free
    assert [c.id for c in notebook.cells] == [f"{name}-{i:02d}" for i in range(len(notebook.cells))]
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert "bootstrap" in code[0].metadata.get("tags", [])  # first: get clara_lite into the runtime
    for cell in code:
        bootstrap = "bootstrap" in cell.metadata.get("tags", [])
        assert cell.outputs == [] and cell.execution_count is None
        for node in ast.walk(ast.parse(cell.source)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) else [])
            for module in names:
                top = module.split(".")[0]
                ok = top in ALLOWED_IMPORTS or module == "IPython.display" or (
                    top in sys.stdlib_module_names and top != "google") or (bootstrap and module == "google.colab")
                assert ok, f"{name} cell {cell.id} imports {module}: cells call clara_lite, not other libraries"
        if bootstrap:  # the one cell that cannot call clara_lite: it installs it
            assert len(cell.source.splitlines()) <= 30, f"{cell.id} grew"
        elif "parameters" not in cell.metadata.get("tags", []):  # inputs are data, however many
            assert len(cell.source.splitlines()) <= 15, f"{cell.id} is not thin"


def test_settings_round_trip_and_options(tmp_path):
    settings = nb.Settings(run_name="a", base_model="tiny-random", compr_rate=4, doc_max_length=16,
                           stage2_steps=0, epochs=2.0, save_steps=3)
    saved = nb.save_settings(tmp_path, settings)
    assert saved.quantization == "auto"  # kept: each training session plans 4-bit for the GPU it gets
    assert "quantization" not in saved.model_options()
    assert nb.current_run(tmp_path) == "a"
    assert nb.saved_settings(tmp_path, "a") == saved
    assert saved.train_options("stage1") == {"epochs": 2.0, "save_steps": 3}  # steps: the recipe's; the rest: defaults
    assert saved.train_options("stage2") == {"epochs": 2.0, "save_steps": 3, "max_steps": None}  # 0: epochs
    assert saved.model_options()["generation_top_k"] == ClaraConfig().generation_top_k  # unset: its one default
    table = dict(line.split(None, 1) for line in saved.format().splitlines())  # the values, not "(default)"
    assert table["compr_rate"] == "4" and table["lora_r"] == str(ClaraConfig().lora_r)  # saved: every value
    assert f"lora_r                 {ClaraConfig().lora_r} (default)" in nb.Settings().format()
    assert table["micro_batch_size"] == "(the hardware plan)" and table["lr"] == "(each stage's own)"
    assert table["data_dir"] == "(not set)" and table["save_steps"] == "3"
    record = json.loads((tmp_path / "runs" / "a" / "run.json").read_text())
    assert record["model"]["compr_rate"] == 4 and "compr_rate" not in record["settings"]  # stored once
    explicit = nb.save_settings(tmp_path / "q", nb.Settings(run_name="q", quantization="none"))
    assert explicit.model_options()["quantization"] == "none"  # an explicit full-precision choice is kept
    with pytest.raises(nb.SettingsError, match="unknown settings"):
        nb.Settings.from_dict({**saved.to_dict(), "typo": 1})
    with pytest.raises(nb.SettingsError, match="compr_rate"):
        nb.save_settings(tmp_path, nb.Settings(run_name="b", compr_rate=32, doc_max_length=16))


def test_raw_documents_without_extract_say_so(tmp_path, capsys):
    settings = nb.save_settings(tmp_path, nb.Settings(run_name="r"))
    assert nb.Workspace(tmp_path, settings).prepare_data("raw") is None
    assert "clara-lite data extract" in capsys.readouterr().out
    assert nb.saved_settings(tmp_path, "r").data_dir is None


# ----------------------------------------------------------------------- headless runs


def test_suite_runs_headless_in_order(tmp_path, venv_kernel, shared_dir):
    drive = tmp_path / "drive"
    outputs = {}
    hub = tmp_path / "hf" / "hub"  # 05's official model: the upstream fixture as apple/CLaRa-7B-Instruct
    lay_out_cache(hub, shared_dir / "fixtures" / "upstream_tiny")
    env = {**_env(drive), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    for name in ORDER:
        started = time.monotonic()
        done = _client(name, tmp_path, OVERRIDES.get(name)).execute(env=env)
        outputs[name] = done
        print(f"{name}: {time.monotonic() - started:.1f} s")
    run = drive / "runs" / "smoke"
    record = json.loads((run / "run.json").read_text())
    assert record["model"]["base_model"] == "tiny-random" and record["settings"]["data_dir"] == "data/example"
    assert (drive / "current_run.txt").read_text().strip() == "smoke"
    assert "plan " in _text(outputs["00_setup"]) and "4-bit none" in _text(outputs["00_setup"])
    data = _text(outputs["01_data"])
    assert "stage1.jsonl (stage1): 40 rows, 0 bad" in data and "sample:" in data and "heldout.jsonl" in data
    for name, stage in (("02_stage1", "stage1"), ("03_stage2", "stage2"), ("04_stage3", "stage3")):
        assert _steps(run / stage) == [1, 2, 3, 4]
        assert f"{stage} final checkpoint: {run / stage / 'final'}" in _text(outputs[name])
    # 03 went on with stage3 in its runtime (CONTINUE_STAGES); 04 then found it final
    assert "continuing with stage3 in this runtime" in _text(outputs["03_stage2"])
    assert "stage3 final checkpoint" in _text(outputs["03_stage2"]) and "already final" in _text(outputs["04_stage3"])
    assert [_images(outputs[n]) for n in ("02_stage1", "03_stage2", "04_stage3")] == [1, 2, 1]  # loss curves
    assert "give the GPU back" in _text(outputs["04_stage3"])  # every notebook ends with how to release it
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert [s["stage"] for s in sessions] == ["stage1", "stage2", "stage3"]  # each session's plan, in run.json
    inference = _text(outputs["05_inference"])
    assert "retrieved #1" in inference and "Recall@1" in inference and "held-out (4 questions)" in inference
    assert "Building the index" in inference and list((run / "indexes").glob("heldout-*/manifest.json"))
    assert (run / "heldout_eval.json").is_file()
    assert "Chat page on http://127.0.0.1:" in inference  # the Gradio page, inline (CHAT_PAGE = True)
    assert list((drive / "exports").glob("smoke*.zip")), inference
    assert "no browser download" not in inference  # DOWNLOAD_ZIP = False: not even tried
    # the official-model cell, against the fixture laid out as apple/CLaRa-7B-Instruct/compression-16
    assert "Loaded apple/CLaRa-7B-Instruct/compression-16" in inference and "retrieves" in inference
    assert inference.count("retrieved #1") >= 3 + 2  # the run's answers and the official model's


def test_stage1_notebook_resumes_after_the_kernel_is_killed(tmp_path, venv_kernel):
    drive = tmp_path / "drive"
    drive.mkdir()
    settings = nb.save_settings(drive, nb.Settings(
        run_name="kill", base_model="tiny-random", compr_rate=4, doc_max_length=16, lora_r=4, stage1_steps=24,
        save_steps=2, log_steps=1, micro_batch_size=2, grad_accum_steps=1, lr=1e-3))
    nb.Workspace(drive, settings).prepare_data("example")
    checkpoints = drive / "runs" / "kill" / "stage1" / "checkpoints"

    client, failure = _client("02_stage1", tmp_path), []

    def run():
        try:
            client.execute(env=_env(drive))
        except Exception as err:  # DeadKernelError once the kernel is killed
            failure.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-*/manifest.json")):
        assert thread.is_alive(), f"02_stage1 ended before a checkpoint: {failure}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    os.kill(client.km.provisioner.pid, signal.SIGKILL)  # a Colab runtime disconnect
    thread.join(120)
    assert failure and not (checkpoints.parent / "final").exists()
    killed_at = len(_steps(checkpoints.parent))

    again = _text(_client("02_stage1", tmp_path).execute(env=_env(drive)))
    resumed = re.search(r"Resuming stage1 from .*step-(\d+) \(step (\d+)/24\)", again)
    assert resumed and "resuming from its checkpoint step" in again, again
    step = int(resumed.group(2))
    assert 2 <= step <= killed_at
    logged = [int(s) for s in re.findall(r"stage1 step (\d+)/24", again)]
    assert logged == list(range(step + 1, 25))  # continues, never restarts at 1
    assert _steps(checkpoints.parent) == list(range(1, 25))
    assert f"stage1 final checkpoint: {checkpoints.parent / 'final'}" in again


# ----------------------------------------------------------------------- Colab set-up, simulated


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """A pretend Colab: ``google.colab`` imported, pip recorded instead of run, Drive under tmp."""
    from clara_lite.notebook import colab

    calls, mounted = [], []
    fake = types.ModuleType("google.colab")
    fake.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google.colab", fake)
    monkeypatch.delenv(colab.DRIVE_ENV, raising=False)
    monkeypatch.setattr(colab, "MOUNT_POINT", str(tmp_path / "content" / "drive"))
    monkeypatch.setattr(colab, "FLASH_FAILED", tmp_path / "flash-failed")
    monkeypatch.setattr(colab, "SETUP_DONE", tmp_path / "setup-done")
    monkeypatch.setattr(colab, "show_logs", lambda: None)

    def pip(*args, timeout=None):  # records what would be installed; the flash-attn release has no such wheel
        calls.append(args)
        missing = any("flash_attn-" in a for a in args)
        return subprocess.CompletedProcess(args, 1 if missing else 0, "",
                                           "ERROR: HTTP error 404 while getting https://github.com/..." if missing else "")

    monkeypatch.setattr(colab, "_pip", pip)
    versions = {"torch": "2.13.0", "transformers": "5.23.0"}
    monkeypatch.setattr(colab, "_installed_version", versions.get)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("")
    (repo / colab.REQUIREMENTS).write_text("# what Colab lacks\ntorch>=9\ntransformers>=5.0,<6  # there\n"
                                           "not-installed-xyz>=1\n")
    return colab, repo, calls, mounted


def test_colab_setup_installs_only_what_is_missing(fake_colab, tmp_path, monkeypatch, capsys):
    colab, repo, calls, mounted = fake_colab
    monkeypatch.setattr(colab, "_gpu_capability", lambda: (7, 5))  # a T4
    env = colab.setup_environment(repo)
    assert env.colab and mounted == [colab.MOUNT_POINT]
    assert env.drive == tmp_path / "content" / "drive" / "MyDrive" / "clara_lite" and env.drive.is_dir()
    assert calls[0][0] == "-c" and calls[0][2:] == ("not-installed-xyz>=1",)  # torch is never installed
    assert "torch==2.13.0" in Path(calls[0][1]).read_text()
    assert calls[1:] == [("--no-deps", colab.EMBEDDED_MODEL), ("--no-deps", "-e", str(repo))]
    assert any("flash-attn: not for this GPU" in note for note in env.notes)
    shown = capsys.readouterr().out  # a line per step while it installs
    assert "installing not-installed-xyz ..." in shown and "installing the embedded default model" in shown
    calls.clear()
    again = colab.setup_environment(repo)
    assert calls == [] and any("already set up in this runtime" in n for n in again.notes)  # a no-op
    monkeypatch.setattr(colab, "_gpu_capability", lambda: None)
    assert any("no GPU" in n and "T4 GPU" in n for n in colab.setup_environment(repo).notes)  # a CPU runtime


def test_colab_flash_attn_tries_the_release_wheel_once_and_is_not_fatal(fake_colab, monkeypatch):
    colab, repo, calls, _ = fake_colab
    monkeypatch.setattr(colab, "_gpu_capability", lambda: (8, 0))  # an A100
    monkeypatch.setattr(colab, "_torch_facts", lambda: ("2.11.0+cu128", "12.8", True, "cp313"))  # Colab's torch
    env = colab.setup_environment(repo)
    url = ("https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/"
           "flash_attn-2.8.3+cu12torch2.11cxx11abiTRUE-cp313-cp313-linux_x86_64.whl")
    assert calls[-1][0] == "--no-deps" and calls[-1][-1] == url
    assert any("no usable prebuilt wheel for flash-attn 2.8.3 (ERROR: HTTP error 404" in note for note in env.notes)
    assert colab.FLASH_FAILED.exists()
    colab.SETUP_DONE.unlink()
    calls.clear()
    colab.setup_environment(repo)
    assert not any(url in call for call in calls)  # not tried again in this runtime


def test_colab_restarts_the_session_itself_when_an_upgrade_was_imported(fake_colab, monkeypatch, capsys):
    colab, repo, calls, _ = fake_colab
    monkeypatch.setattr(colab, "_gpu_capability", lambda: (7, 5))
    (repo / colab.REQUIREMENTS).write_text("pytest>=999\n")  # imported here, as transformers may be in Colab
    shutdowns = []
    kernel = types.SimpleNamespace(kernel=types.SimpleNamespace(do_shutdown=lambda restart: shutdowns.append(restart)))
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: kernel)
    env = colab.setup_environment(repo)
    assert env.restart == ["pytest"] and shutdowns == [True]  # Colab's own restart, not a request in text
    assert "restarting the session" in capsys.readouterr().out


def test_outside_colab_nothing_is_installed(tmp_path, monkeypatch):
    from clara_lite.notebook import colab

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv(colab.DRIVE_ENV, str(tmp_path / "d"))
    monkeypatch.setattr(colab, "show_logs", lambda: None)
    monkeypatch.setattr(colab, "_pip", lambda *a, **k: pytest.fail("pip ran outside Colab"))
    env = colab.setup_environment("/nonexistent")
    assert not env.colab and env.drive == tmp_path / "d" and env.installed == []


def test_each_stage_trains_with_the_recipe_for_the_hardware_it_starts_on(tmp_path, capsys):
    """RECIPE = "auto": a stage starting on this CPU takes colab_cpu; a stage that started on a T4 keeps colab_t4
    when it resumes here; a recipe file chosen in 00_setup is what trains, and run.json names it."""
    ws = nb.Workspace(tmp_path, nb.save_settings(tmp_path, nb.Settings(
        run_name="r", base_model="tiny-random", compr_rate=4, doc_max_length=16, lora_r=4, micro_batch_size=2)))
    assert ws.stage_recipe("stage1").path.stem == "colab_cpu"
    run = ws.run
    run.record.stage("stage2").recipe = {"path": str(find_recipe("colab_t4")), "sha256": ""}
    run.save()
    assert ws.stage_recipe("stage2").path.stem == "colab_t4"

    recipe = tmp_path / "short.yaml"
    recipe.write_text("train:\n  log_steps: 1\n  save_minutes: 0\nstage1:\n  max_steps: 2\n")
    settings = nb.save_settings(tmp_path, nb.Settings(run_name="s", base_model="tiny-random", compr_rate=4,
                                                      doc_max_length=16, lora_r=4, micro_batch_size=2,
                                                      recipe=str(recipe)))
    ws = nb.Workspace(tmp_path, settings)
    ws.prepare_data("example")
    assert ws.train("stage1") is not None
    assert "recipe short; 2 steps" in capsys.readouterr().out
    stage = json.loads((tmp_path / "runs" / "s" / "run.json").read_text())["stages"]["stage1"]
    assert stage["recipe"]["path"] == str(recipe) and stage["train"]["max_steps"] == 2
    assert _steps(tmp_path / "runs" / "s" / "stage1") == [1, 2]
    with pytest.raises(nb.SettingsError, match="no shipped recipe of that name"):
        nb.Settings(run_name="t", recipe="colab_tpu")


def test_settings_form_saves_what_was_typed_and_an_existing_run_is_not_asked_again(tmp_path, capsys):
    import ipywidgets

    form = nb.settings_form(tmp_path, nb.Settings(run_name="f", base_model="tiny-random"))
    fields = {w.description: w for w in form.children if isinstance(w, ipywidgets.ValueWidget)}
    fields["compression rate"].value, fields["document length"].value = 4, 16
    cpu_steps = load_recipe("colab_cpu").stages
    assert fields["stage1 steps (0=epochs)"].value == cpu_steps["stage1"]["max_steps"]  # this runtime's recipe
    fields["stage2 steps (0=epochs)"].value = 0
    next(w for w in form.children if isinstance(w, ipywidgets.Button)).click()
    saved = nb.saved_settings(tmp_path, "f")
    assert (saved.compr_rate, saved.doc_max_length, saved.stage2_steps) == (4, 16, 0)
    assert saved.stage1_steps is None  # left as shown: the recipe decides wherever stage1 runs
    assert "plan " in capsys.readouterr().out
    fields["compression rate"].value = 8  # the run exists now: its settings stay
    next(w for w in form.children if isinstance(w, ipywidgets.Button)).click()
    assert "Not saved: run 'f' already has other settings (compr_rate)" in capsys.readouterr().out
    assert nb.saved_settings(tmp_path, "f") == saved
    again = nb.choose_settings(tmp_path, nb.Settings(base_model="qwen2.5-1.5b"), interactive=False)
    assert again == saved  # '' = the current run; its run.json wins
    assert "Not applied (run.json wins for an existing run): base_model" in capsys.readouterr().out


def test_hardware_settings_change_for_an_existing_run_and_the_next_session_uses_them(tmp_path, capsys):
    import ipywidgets

    drive = tmp_path / "drive"
    settings = nb.save_settings(drive, nb.Settings(
        run_name="hw", base_model="tiny-random", compr_rate=4, doc_max_length=16, lora_r=4, stage1_steps=2,
        stage2_steps=2, save_steps=2, log_steps=1, micro_batch_size=2, grad_accum_steps=1, lr=1e-3))
    ws = nb.Workspace(drive, settings)
    ws.prepare_data("example")
    assert ws.train("stage1") is not None
    # 00_setup again, its parameters cell asking for other hardware settings (and another base model)
    asked = nb.Settings(run_name="hw", base_model="qwen2.5-1.5b", quantization="none", micro_batch_size=1,
                        grad_accum_steps=2, gradient_checkpointing=True, attention="eager")
    saved = nb.choose_settings(drive, asked, interactive=False)
    shown = capsys.readouterr().out
    assert "Not applied (run.json wins for an existing run): base_model" in shown
    assert "Changed for this run" in shown and "micro_batch_size 2 -> 1" in shown
    assert (saved.quantization, saved.micro_batch_size, saved.gradient_checkpointing, saved.attention) == \
        ("none", 1, True, "eager")
    with pytest.raises(nb.SettingsError, match="only quantization, micro_batch_size"):
        nb.save_settings(drive, replace(saved, compr_rate=8))  # what changes results stays
    assert nb.Workspace.open(drive).train("stage2") is not None
    record = json.loads((drive / "runs" / "hw" / "run.json").read_text())
    assert record["model"]["quantization"] == "none"
    last = record["sessions"][-1]["training"]
    assert (last["micro_batch_size"], last["grad_accum_steps"], last["gradient_checkpointing"],
            last["attn_implementation"]) == (1, 2, True, "eager")
    assert record["stages"]["stage2"]["train"]["rows_per_step"] == 2
    # the form an existing run shows: its hardware settings only
    form = nb.choose_settings(drive, nb.Settings(run_name="hw"), interactive=True)
    assert form == nb.saved_settings(drive, "hw")
    widget = __import__("clara_lite.notebook.widgets", fromlist=["hardware_form"]).hardware_form(drive, form)
    boxes = {w.description: w for w in widget.children if isinstance(w, ipywidgets.ValueWidget)}
    boxes["attention"].value = "sdpa"
    next(w for w in widget.children if isinstance(w, ipywidgets.Button)).click()
    assert nb.saved_settings(drive, "hw").attention == "sdpa"


@pytest.fixture
def colab_release(fake_colab, monkeypatch):
    """The pretend Colab of ``fake_colab`` with Drive mounted, ``drive.flush_and_unmount`` and
    ``runtime.unassign`` recorded in one list (their order is the point)."""
    colab, _, _, _ = fake_colab
    events = []
    fake = sys.modules["google.colab"]
    fake.drive.flush_and_unmount = lambda: events.append("flush")
    fake.runtime = types.SimpleNamespace(unassign=lambda: events.append("unassign"))
    (Path(colab.MOUNT_POINT) / "MyDrive").mkdir(parents=True)
    monkeypatch.setattr(colab, "RELEASE_GRACE_S", 0.0)
    return colab, fake, events


def test_release_checks_what_is_on_drive_flushes_it_then_releases(colab_release, tmp_path, capsys):
    from clara_lite.core.layout import write_manifest

    colab, _, events = colab_release
    drive = colab.drive_root()
    ws = nb.Workspace(drive, nb.save_settings(drive, nb.Settings(run_name="rel")))
    step = ws.layout.checkpoints("stage1") / "step-000002"
    step.mkdir(parents=True)
    (step / "adapters.safetensors").write_bytes(b"weights")
    write_manifest(step)
    (drive / "exports").mkdir()
    with __import__("zipfile").ZipFile(drive / "exports" / "rel-stage1.zip", "w") as z:
        z.writestr("config.json", "{}")
    checked = []
    assert colab.release_runtime(True, check=lambda: checked.append(list(events)) or ws.saved_problems())
    assert checked == [[]] and events == ["flush", "unassign"]  # checked while readable, flushed, then released
    assert "Drive is up to date" in capsys.readouterr().out
    # a checkpoint that does not match its manifest, a zip cut short: nothing is flushed or released
    events.clear()
    (step / "adapters.safetensors").write_bytes(b"weights, torn")
    (drive / "exports" / "rel-stage1.zip").write_bytes(b"PK\x03\x04 cut short")
    assert not ws.release(True) and events == []
    shown = capsys.readouterr().out
    assert "runs/rel/stage1/checkpoints/step-000002: adapters.safetensors has" in shown
    assert "exports/rel-stage1.zip does not read back" in shown


def test_the_stop_button_cancels_the_release(colab_release, monkeypatch, capsys):
    colab, fake, events = colab_release

    def stop_pressed(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(colab.time, "sleep", stop_pressed)  # during the seconds to change one's mind
    assert not colab.release_runtime(True) and events == ["flush"]
    assert "Release cancelled (stop pressed)" in capsys.readouterr().out
    fake.drive.flush_and_unmount = lambda: (_ for _ in ()).throw(KeyboardInterrupt())  # stop while it flushes
    assert not colab.release_runtime(True) and "unassign" not in events
    # training stopped in this runtime (the stop button during ws.train): no release, not even a flush
    events.clear()
    assert not colab.release_runtime(True, stopped="stage1 was stopped before its final checkpoint")
    assert events == [] and "Not releasing this runtime: stage1 was stopped" in capsys.readouterr().out
    fake.drive.flush_and_unmount = lambda: (_ for _ in ()).throw(ValueError("Drive timed out"))
    assert not colab.release_runtime(True) and "Drive could not be flushed (Drive timed out)" in capsys.readouterr().out
