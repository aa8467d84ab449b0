"""Every name clara_lite writes to disk, and the few primitives for writing them so they can be trusted.

The bottom of the package: it imports nothing from clara_lite, so code that only *reads* a model
folder, a checkpoint or a zip depends on this module and never on training. Changing a name on
disk is a change here.

A run folder (``RunLayout``)::

    <run>/run.json                          the run's record (``train.record.RunRecord``)
    <run>/run.json.bak                      its previous version, copied before each rewrite
    <run>/train.lock                        who is training in the folder now (``train.lock``)
    <run>/<stage>/checkpoints/step-NNNNNN/  complete only with a valid manifest.json
    <run>/<stage>/final/                    the stage's model + summary.json + manifest.json
    <run>/<stage>/metrics.jsonl             <run>/<stage>/loss.png
    <run>/teacher_answers.jsonl             distillation's teacher answers, one line each, shared by the stages
    <runs>/../exports/<run>-<stage>.zip     (``RunLayout.default_export``)

Why no renames: Drive caches writes on the VM and syncs later; renames there have lost data and
hard links fail. So files are written in place, flushed and fsync'd, and a folder counts as complete
only when its manifest (written last, listing sha256 and size of every file) matches what is on
disk. One manifest format serves checkpoints, finals, exports and unpacked zips.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ClaraError

# --------------------------------------------------------------------------- names

# a saved model (our format): config, adapters, added-token rows, tokenizer
CONFIG_FILE = "clara_config.json"
ADAPTERS_DIR = "adapters"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADDED_TOKENS_FILE = "added_tokens.safetensors"
TOKENIZER_DIR = "tokenizer"

# an upstream CLaRa checkpoint (apple/ml-clara)
UPSTREAM_CONFIG = "config.json"
UPSTREAM_ADAPTERS = "adapters.pth"
UPSTREAM_LAYERS = "decoder_first_last_layers.pth"

# a training checkpoint: a saved model plus the optimizer, scheduler, scaler and RNG states
MODEL_DIR = "model"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
STEP_PREFIX = "step-"

# a run folder
RUN_FILE = "run.json"
RUN_BACKUP = "run.json.bak"
LOCK_FILE = "train.lock"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
HELDOUT_EVAL = "heldout_eval.json"
TEACHER_ANSWERS = "teacher_answers.jsonl"  # the text-reading teacher's answers (TrainConfig.targets), appended
BENCHMARKS_DIR = "benchmarks"  # <run>/benchmarks/<name>-<setting>/: comparisons on benchmark files (05_inference)
BEST_DIR = "best"  # a stage's checkpoint with the best held-out metric (TrainConfig.best_metric)

# a comparison of systems on the same questions (clara-lite eval --systems)
COMPARE_MARKDOWN = "comparison.md"
COMPARE_JSON = "comparison.json"
COMPARE_CHART = "comparison.png"
COMPARE_PREDICTIONS = "predictions.jsonl"
RUNS_DIR = "runs"
EXPORTS_DIR = "exports"
INDEXES_DIR = "indexes"  # <run>/indexes/<documents>-<model fingerprint>/: document indexes (05_inference)

# an exported zip
CARD = "README.md"
MANIFEST = "manifest.json"

# a compressed document index (``clara-lite index build``; clara_lite.serve.index)
INDEX_FILE = "index.json"  # settings, model fingerprint, parts; identical for the same build
INDEX_CHUNKS = "chunks.jsonl"  # one row per chunk: text, source, page, character span
INDEX_MEMORY_DIR = "memory"  # memory vectors (and MiniLM keys), one safetensors file per part of a document group
INDEX_SHARDS_DIR = "shards"  # shard-IIIII-of-NNNNN/: one process's part of a sharded build
INDEX_LOCK = "index.lock"  # who writes the index now (build, add, remove, merge); never in the manifest
PENDING = ".new"  # an index file's next content, staged; index.json.new whole is the commit point


def index_part_file(group: int, sub: int) -> str:
    """A memory part's path inside the index folder: the ``sub``-th slice of document group ``group``."""
    return f"{INDEX_MEMORY_DIR}/part-{group:06d}-{sub:03d}.safetensors"


def index_shard_dir(root: str | Path, shard: int, n_shards: int) -> Path:
    return Path(root) / INDEX_SHARDS_DIR / f"shard-{shard:05d}-of-{n_shards:05d}"


# where converted models and unpacked zips are cached
CACHE_ENV = "CLARA_LITE_CACHE"
ZIPS_DIR = "zips"


def cache_dir() -> Path:
    """Where converted models and unpacked zips live: ``$CLARA_LITE_CACHE`` or the user cache dir."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clara_lite"
    )
    return Path(root)


# --------------------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class RunLayout:
    """Paths inside a run folder; pure: nothing is created or read.

    >>> RunLayout("runs/demo").final("stage2")
    PosixPath('runs/demo/stage2/final')
    """

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def run_backup(self) -> Path:
        return self.root / RUN_BACKUP

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def checkpoints(self, stage: str) -> Path:
        return self.stage_dir(stage) / CHECKPOINTS_DIR

    def final(self, stage: str) -> Path:
        return self.stage_dir(stage) / FINAL_DIR

    def metrics(self, stage: str) -> Path:
        return self.stage_dir(stage) / METRICS_FILE

    def loss_plot(self, stage: str) -> Path:
        return self.stage_dir(stage) / LOSS_PLOT

    @property
    def heldout_eval(self) -> Path:
        return self.root / HELDOUT_EVAL

    @property
    def teacher_answers(self) -> Path:
        return self.root / TEACHER_ANSWERS

    def index(self, name: str) -> Path:
        """A document index built from the run's model (``serve.index``)."""
        return self.root / INDEXES_DIR / name

    def benchmark(self, name: str) -> Path:
        """Where a comparison named ``name`` (a data file and setting) writes its report."""
        return self.root / BENCHMARKS_DIR / name

    def default_export(self, stage: str) -> Path:
        """``<root>/exports/<run>-<stage>.zip`` for a run in a ``runs/`` folder (the Drive layout:
        ``MyDrive/clara_lite/runs/<run>`` exports to ``MyDrive/clara_lite/exports/``), otherwise
        ``<run>/exports/<run>-<stage>.zip``."""
        run_dir = self.root.resolve()
        base = run_dir.parent.parent if run_dir.parent.name == RUNS_DIR else run_dir
        return base / EXPORTS_DIR / f"{run_dir.name}-{stage}.zip"


def step_dir(checkpoints: Path, step: int) -> Path:
    return Path(checkpoints) / f"{STEP_PREFIX}{step:06d}"


def step_folders(checkpoints: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``step-N`` folder, complete or not, by name."""
    checkpoints = Path(checkpoints)
    out = []
    for folder in sorted(checkpoints.glob(f"{STEP_PREFIX}*")) if checkpoints.is_dir() else ():
        try:
            out.append((int(folder.name[len(STEP_PREFIX):]), folder))
        except ValueError:
            continue
    return out


# --------------------------------------------------------------------------- trusted writing


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | Path) -> None:
    """fsync a file or a folder (its entries) that is already written."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, data, *, indent: int | None = 2) -> None:
    """Write JSON in place, flushed and fsync'd (Drive does not do renames reliably)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def write_bytes_synced(path: str | Path, data: bytes) -> None:
    """Write bytes in place, flushed and fsync'd."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_keeping_copy(path: str | Path, backup: str | Path, data, *, indent: int | None = 2) -> None:
    """Rewrite the JSON file ``path`` in place, its current content (when it is valid JSON) first
    copied to ``backup``: without renames, a kill or a full disk during either write still leaves
    one whole copy (``path`` during the copy, ``backup`` during the rewrite)."""
    path, backup = Path(path), Path(backup)
    if path.is_file():
        old = path.read_bytes()
        try:
            json.loads(old)
        except (ValueError, RecursionError):  # a torn file is never copied over a good one
            pass
        else:
            write_bytes_synced(backup, old)
    write_json(path, data, indent=indent)


# --------------------------------------------------------------------------- the manifest

MANIFEST_VERSION = 1
KIND_CHECKPOINT = "clara_lite-checkpoint"  # a step checkpoint or a stage's final folder
KIND_MODEL = "clara_lite-model"  # an exported zip (and the folder it unpacks to)
KIND_INDEX = "clara_lite-index"  # a compressed document index (serve.index)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ClaraError, ValueError):
    """A manifest that is missing, unreadable, of another kind or newer format, or malformed."""
    code = "manifest"


def file_entry(path: str | Path) -> dict:
    return {"sha256": sha256_file(path), "size": Path(path).stat().st_size}


def write_manifest(folder: str | Path, kind: str = KIND_CHECKPOINT, extra: dict | None = None,
                   skip: tuple[str, ...] = ()) -> dict:
    """fsync every file under ``folder`` (but the top-level names in ``skip``), then write its manifest
    (itself fsync'd) last."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
                       and p.relative_to(folder).as_posix() not in skip):
        fsync_path(path)
        files[path.relative_to(folder).as_posix()] = file_entry(path)
    manifest = {"kind": kind, "format_version": MANIFEST_VERSION, "files": files, **(extra or {})}
    write_json(folder / MANIFEST, manifest, indent=1)
    fsync_path(folder)
    return manifest


def parse_manifest(raw: bytes | str, where: str, kind: str) -> dict:
    """The manifest's ``files`` ({relative path: {sha256, size}}), after checking everything in it.

    Checkpoints written before the format had a ``kind`` (``{"format": 1, "files": ...}``) still read.
    """
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    legacy = kind == KIND_CHECKPOINT and "kind" not in manifest and manifest.get("format") == MANIFEST_VERSION
    if not legacy:
        if manifest.get("kind") != kind:
            what = {KIND_MODEL: "model export", KIND_INDEX: "document index"}.get(kind, "checkpoint")
            raise ManifestError(f"{where}: kind is {manifest.get('kind')!r}, not {kind!r}: not a clara_lite {what}")
        version = manifest.get("format_version")
        if version != MANIFEST_VERSION:
            newer = isinstance(version, int) and version > MANIFEST_VERSION
            raise ManifestError(f"{where}: unknown format_version {version!r} (this clara_lite reads "
                                f"{MANIFEST_VERSION})" + ("; upgrade clara_lite" if newer else ""))
    files = manifest.get("files")
    ok = isinstance(files, dict) and all(
        isinstance(meta, dict) and isinstance(meta.get("size"), int) and meta["size"] >= 0
        and isinstance(meta.get("sha256"), str) and _SHA256.match(meta["sha256"])
        for meta in files.values())
    if not ok:
        raise ManifestError(f"{where}: 'files' must map each path to its sha256 and size")
    for name in files:
        if not safe_relative(name) or name == MANIFEST:
            raise ManifestError(f"{where}: unsafe path {name!r} in the manifest")
    return files


def read_manifest(folder: str | Path, kind: str = KIND_CHECKPOINT) -> dict:
    """The ``files`` of ``folder``'s manifest; raises :class:`ManifestError` (FileNotFoundError if absent)."""
    path = Path(folder) / MANIFEST
    return parse_manifest(path.read_bytes(), str(path), kind)


def verify(folder: str | Path, kind: str = KIND_CHECKPOINT, *, exact: bool = False, hashes: bool = True,
           interrupted: str = "the save was interrupted") -> str | None:
    """None when ``folder`` matches its manifest, else why not (for the message).

    ``exact`` also refuses files the manifest does not list (an unpacked zip must hold nothing else).
    ``hashes=False`` checks presence and sizes only: what a big index checks on every load, where
    hashing gigabytes of memory vectors would cost more than the load itself. ``interrupted`` says what
    a missing manifest means for this kind of folder.
    """
    folder = Path(folder)
    try:
        files = read_manifest(folder, kind)
    except FileNotFoundError:
        return f"no manifest ({interrupted})"
    except (OSError, ManifestError) as err:
        return f"unreadable manifest ({err})"
    if exact:
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
        if present != set(files):
            return f"files differ from the manifest: {sorted(present ^ set(files))}"
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {meta['size']}"
        if hashes and sha256_file(path) != meta["sha256"]:
            return f"{rel} does not match its sha256"
    return None


_SAFE_NAME = re.compile(r"^[\w.\-]+(/[\w.\-]+)*$")  # relative, '/'-separated, no '\', ':', NUL


def safe_relative(name: str) -> bool:
    """A relative '/'-separated path that cannot leave its folder (no '..', no absolute, no drive)."""
    return bool(_SAFE_NAME.match(name)) and all(part not in (".", "..") for part in name.split("/"))
