"""Where clara_lite comes from, in one place: the Colab badges, the README, every notebook's first cell
and ``clara-lite doctor`` take it from here (``notebooks/build.py`` writes it into the notebooks).

A fresh Colab runtime tries, in this order: a wheel of this version in the Drive project folder
(``<drive>/wheels/``, put there by ``make wheel`` or ``clara-lite bundle`` on a laptop whose Drive is
synced), the git tag of this version (``v`` + ``clara_lite.__version__``, so the notebook and the
package it installs never drift apart), then the package index (once published there).

Standard library only: a runtime reads this before anything is installed.

>>> git_requirement()
'git+https://github.com/clara-lite/clara_lite.git@v0.1.0'
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .. import __version__

GITHUB_REPO = "clara-lite/clara_lite"  # THE setting: owner/name of the repository on GitHub
DIST = "clara_lite"  # the distribution's name on an index and in a wheel's file name
WHEELS_DIR = "wheels"  # <drive>/wheels/clara_lite-<version>-py3-none-any.whl
SOURCE_ENV = "CLARA_SOURCE"  # a wheel path or any pip requirement, tried instead of the default order
GIT_ENV = "CLARA_GIT"  # another git URL for the same tag (a fork, a mirror, file:///path/to/clone)


def tag(version: str = __version__) -> str:
    """The git tag a version is released under: ``v0.1.0``."""
    return f"v{version}"


def git_url() -> str:
    return f"https://github.com/{GITHUB_REPO}.git"


def git_requirement(url: str | None = None, version: str = __version__) -> str:
    """What pip installs from git: the repository at this version's tag."""
    return f"git+{url or git_url()}@{tag(version)}"


def index_requirement(version: str = __version__) -> str:
    return f"{DIST}=={version}"


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
    return (f"Colab installs it from <drive>/{WHEELS_DIR}/{wheel_glob()}, else {git_requirement()}, "
            f"else {index_requirement()}")


def checkout() -> Path | None:
    """The source checkout this clara_lite runs from (an editable install), None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def build_wheel(out_dir: str | Path) -> Path:
    """This checkout as ``clara_lite-<version>-py3-none-any.whl`` in ``out_dir`` (``make wheel``,
    ``clara-lite bundle``): what a Colab runtime installs first when it finds it in ``<drive>/wheels``."""
    root = checkout()
    if root is None:
        raise FileNotFoundError("a wheel is built from a clara_lite checkout, and this clara_lite is installed "
                                f"from one: `git clone {git_url()}`, then `make wheel` there")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "--disable-pip-version-check", "-w", str(out), str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = out / f"{DIST}-{__version__}-py3-none-any.whl"
    if done.returncode != 0 or not wheel.is_file():
        raise RuntimeError(f"pip wheel failed; pip said:\n{done.stdout}{done.stderr}")
    return wheel
