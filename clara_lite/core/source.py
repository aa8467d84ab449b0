"""Where clara_lite comes from, in one place: the Colab badges, the README, every notebook's first cell
and ``clara-lite doctor`` take it from here (``notebooks/build.py`` writes it into the notebooks).

A fresh Colab runtime tries, in this order: a wheel of this version beside the notebooks in the Drive
project folder (``<drive>/``: ``clara-lite bundle --drive DIR`` writes that folder, the six notebooks, the
wheel and a START_HERE note, for dragging into Drive) or in ``<drive>/wheels/`` (``make wheel``), then the
git tag of this version (``v`` + ``clara_lite.__version__``, so the notebook and the package it installs
never drift apart) once :data:`GIT_REPO_OURS` says the repository is this project's (or ``CLARA_GIT`` names
one), then the package index, but only once :data:`INDEX_NAME_OURS` says the name there is this project's:
until then whoever registers the GitHub owner or ``clara_lite`` would run code in every user's runtime.

Standard library only: a runtime reads this before anything is installed.

>>> git_requirement()
'git+https://github.com/clara-lite/clara_lite.git@v0.1.0'
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from .. import __version__

GITHUB_REPO = "clara-lite/clara_lite"  # THE setting: owner/name of the repository on GitHub
DIST = "clara_lite"  # the distribution's name on an index and in a wheel's file name
WHEELS_DIR = "wheels"  # <drive>/wheels/clara_lite-<version>-py3-none-any.whl
SOURCE_ENV = "CLARA_SOURCE"  # a wheel path or any pip requirement, tried instead of the default order
GIT_ENV = "CLARA_GIT"  # another git URL for the same tag (a fork, a mirror, file:///path/to/clone)
# True only once the name DIST on the package index is registered by this project's maintainers. False: the
# notebooks never install `clara_lite` from an index (anyone may register an unclaimed name).
INDEX_NAME_OURS = False
# True only once GITHUB_REPO exists and belongs to this project. False: the notebooks try git only when CLARA_GIT
# names a repository (a fork, a mirror): an unclaimed GitHub owner is the same open door as an unclaimed index name.
GIT_REPO_OURS = False
START_HERE = "START_HERE.md"


def tag(version: str = __version__) -> str:
    """The git tag a version is released under: ``v0.1.0``."""
    return f"v{version}"


def git_url() -> str:
    return f"https://github.com/{GITHUB_REPO}.git"


def git_requirement(url: str | None = None, version: str = __version__) -> str:
    """What pip installs from git: the repository at this version's tag."""
    return f"git+{url or git_url()}@{tag(version)}"


def index_requirement(version: str = __version__) -> str:
    """What pip installs from the index (with the ``colab`` extra and its dependencies, torch kept), once
    :data:`INDEX_NAME_OURS`."""
    return f"{DIST}[colab]=={version}"


def wheel_glob(version: str = __version__) -> str:
    """The file name pattern of this version's wheel (``make wheel`` writes ``py3-none-any``)."""
    return f"{DIST}-{version}-*.whl"


def colab_url(notebook: str, version: str = __version__) -> str:
    """The notebook as Colab opens it from GitHub, at this version's tag."""
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{tag(version)}/notebooks/{notebook}.ipynb"


def badge(notebook: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def describe() -> str:
    """One line for ``doctor``: where a Colab runtime gets this version from."""
    git = f", else {git_requirement()}" if GIT_REPO_OURS else f" (git: only ${GIT_ENV}, until {GITHUB_REPO} is ours)"
    index = f", else {index_requirement()}" if INDEX_NAME_OURS else " (the package index: not until the name is ours)"
    return f"Colab installs it from <drive>/{wheel_glob()} or <drive>/{WHEELS_DIR}/{git}{index}"


def checkout() -> Path | None:
    """The source checkout this clara_lite runs from (an editable install), None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def build_wheel(out_dir: str | Path) -> Path:
    """This checkout as ``clara_lite-<version>-py3-none-any.whl`` in ``out_dir`` (``make wheel``,
    ``clara-lite bundle``): what a Colab runtime installs first when it finds it on Drive.

    Built by pip with this Python's setuptools when it can (no network, ~1 s), else in pip's isolated build
    environment (setuptools fetched once, then cached): no virtual environment, no torch, nothing else."""
    root = checkout()
    if root is None:
        raise FileNotFoundError("a wheel is built from a clara_lite checkout, and this clara_lite is installed "
                                "from a wheel or git: download the repository (a zip of it is enough), then "
                                "`make wheel` or `make bundle DRIVE=<folder>` there")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{DIST}-{__version__}-py3-none-any.whl"
    said = []
    for isolation in [["--no-build-isolation"], []] if _can_build_here() else [[]]:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "--disable-pip-version-check",
               "-w", str(out), str(root)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0 and wheel.is_file():
            return wheel
        said.append(done.stdout + done.stderr)
    raise RuntimeError("pip wheel failed; pip said:\n" + "\n".join(said))


def _can_build_here() -> bool:
    """This Python's setuptools builds wheels itself (>= 70.1, or the ``wheel`` package beside an older one)."""
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or ((major, minor) >= (68, 0) and importlib.util.find_spec("wheel") is not None)


def notebooks(root: Path) -> list[Path]:
    """The checkout's notebooks, in order (00_setup ... 05_inference)."""
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def bundle(folder: str | Path) -> Path:
    """A Drive-ready folder: the six notebooks, this version's wheel beside them and :data:`START_HERE`.
    Dragged into Google Drive as ``MyDrive/clara_lite``, each notebook installs the wheel from beside
    itself; nothing of this project needs to be online. Wheels of other versions there are removed."""
    root = checkout()
    if root is None:
        raise FileNotFoundError("clara-lite bundle needs a clara_lite checkout (a zip of the repository is enough)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{DIST}-*.whl"):
        if not old.name.startswith(f"{DIST}-{__version__}-"):
            old.unlink()
    wheel = build_wheel(folder)
    for notebook in notebooks(root):
        shutil.copyfile(notebook, folder / notebook.name)
    (folder / START_HERE).write_text(start_here([n.name for n in notebooks(root)], wheel.name), encoding="utf-8")
    return folder


def start_here(names: list[str], wheel: str) -> str:
    return f"""# clara_lite {__version__}: start here

This folder is everything Colab needs: {len(names)} notebooks and `{wheel}`, the package they install.

1. Put this folder into your Google Drive as **MyDrive/clara_lite** (drag it onto drive.google.com, or let
   Google Drive for desktop sync it). The notebooks look for the wheel there, beside themselves.
2. In Drive, open `{names[0]}` with Google Colaboratory (double-click; the first time: *Open with >
   Connect more apps > Colaboratory*). *Runtime > Run all*. Allow Drive access when asked.
3. Then, one after another: {", ".join(f"`{n}`" for n in names[1:])}. 00 and 01 need no GPU; for 02-05
   choose *Runtime > Change runtime type > T4 GPU*. Each notebook says what it needs and how long it takes.

Your runs, checkpoints and exports go into `MyDrive/clara_lite/runs` and `exports`. After a disconnect, open
the notebook again and *Run all*: it continues from the newest checkpoint (within 10 minutes of the disconnect
it may say the old runtime still holds the run: set `TAKE_OVER = True` as it tells you).
"""


def main(argv: list[str] | None = None) -> int:
    """``python3 -m clara_lite.core.source wheel DIR | bundle DIR``: the Makefile's ``wheel`` and ``bundle``,
    with any Python 3.10+ and no virtual environment (this module needs only the standard library)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python3 -m clara_lite.core.source", description=main.__doc__.split(":")[0])
    parser.add_argument("what", choices=("wheel", "bundle"))
    parser.add_argument("folder")
    args = parser.parse_args(argv)
    if args.what == "wheel":
        wheel = build_wheel(args.folder)
        print(f"{wheel} ({wheel.stat().st_size / 1e3:.0f} kB)")
    else:
        print(bundle_note(bundle(args.folder)))
    return 0


def bundle_note(folder: Path) -> str:
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    return (f"{folder}: {', '.join(files)}\nPut this folder into Google Drive as MyDrive/clara_lite (drag it onto "
            f"drive.google.com), then open 00_setup.ipynb there with Colab: {START_HERE} says the rest.")


if __name__ == "__main__":
    sys.exit(main())
