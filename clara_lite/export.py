"""A trained run as one zip, opened safely wherever it ends up; and asking the model a question.

    <run>-<stage>.zip
        adapters/<name>/adapter_config.json + adapter_model.safetensors
        added_tokens.safetensors   clara_config.json   tokenizer/...      (as ``save_model`` writes them)
        README.md                  model card: base model, stages, steps, losses, data, hardware, versions
        manifest.json              {"kind": "clara_lite-model", "format_version": 1,
                                    "files": {path: {"sha256": ..., "size": ...}}}

The base model is never inside (a zip is adapters-sized): loading needs it by its registry name or
Hub id, or ``base_path=`` (``--base-path``) on an offline machine.

A zip may come from anywhere (a shared Drive link), so opening one trusts nothing: every member's
name, type and size is checked against the manifest before a byte is written; bytes are counted
and hashed while they are extracted; extraction happens in a temporary folder that is renamed into
the cache only when complete, and removed otherwise. Only JSON and safetensors are read: nothing
is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from . import __version__
from .checkpoint import MANIFEST as FINAL_MANIFEST
from .checkpoint import sha256_file, verify
from .config import CONFIG_FILE, ClaraConfig
from .run import RUN_FILE, Run
from .stages import ORDER, get_stage
from .training import SUMMARY_FILE

log = logging.getLogger(__name__)

KIND = "clara_lite-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CARD = "README.md"
MAX_UNPACKED_BYTES = 8 << 30  # adapters of a 7B model at r=64 stay far below; a zip bomb does not
MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 1 << 20
MAX_DOCS_WITHOUT_RETRIEVER = 16
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same model always gives the same bytes
_SAFE_NAME = re.compile(r"^[\w.\-]+(/[\w.\-]+)*$")  # relative, '/'-separated, no '\', ':', NUL


class ExportError(ValueError):
    """A run that cannot be exported (no final stage, not a run folder)."""


class ZipImportError(ValueError):
    """A zip that cannot be trusted or read; the message names the problem."""


class BaseModelMissing(FileNotFoundError):
    """The base model a saved model needs is not on this machine."""


# --------------------------------------------------------------------------- export


def export_zip(run_dir, stage: str | None = None, out=None) -> Path:
    """Zip ``stage``'s final model of ``run_dir`` (default: the newest final stage) with a model card.

    ``out`` defaults to :func:`default_out`. Written to a temporary file beside ``out``, then renamed.

    >>> export_zip("runs/demo")  # doctest: +SKIP
    PosixPath('exports/demo-stage3.zip')
    """
    run = Run(run_dir)
    if not (run.root / RUN_FILE).is_file():
        raise ExportError(f"{run.root} is not a run folder (no {RUN_FILE}): pass the --run-dir used for training")
    stage = get_stage(stage).name if stage else _newest_final_stage(run)
    final = run.final_dir(stage)
    if not run.is_final(stage):
        damage = verify(final) if final.is_dir() else None
        state = f"{stage}/final is damaged: {damage}" if damage else run.status()[stage]
        raise ExportError(f"{stage} of {run.root} is not final ({state}): finish it with "
                          f"`clara-lite train --stage {stage} --run-dir {run.root}` (a rerun resumes)")
    # exactly the files the stage's verified manifest lists; its summary goes into the card instead
    listed = json.loads((final / FINAL_MANIFEST).read_text())["files"]
    names = sorted(set(listed) - {SUMMARY_FILE})
    out = Path(out) if out else default_out(run.root, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
                files = {name: _add_file(zf, final / name, name) for name in names}
                changed = [n for n in names if files[n]["sha256"] != listed[n]["sha256"]]
                if changed:
                    raise ExportError(f"{', '.join(changed)} in {final} changed after it was saved: is training "
                                      "still writing there? Rerun the stage to finish it, then export")
                card = model_card(run, stage, out.name).encode("utf-8")
                files[CARD] = _add_bytes(zf, CARD, card)
                manifest = {"kind": KIND, "format_version": FORMAT_VERSION, "stage": stage,
                            "created_by": f"clara_lite {__version__}", "files": files}
                _add_bytes(zf, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an export is an ordinary shareable file
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("Exported %s/final of %s to %s (%.1f MB)", stage, run.root, out, out.stat().st_size / 1e6)
    return out


def default_out(run_dir, stage: str) -> Path:
    """``<root>/exports/<run>-<stage>.zip`` for a run in a ``runs/`` folder (the Drive layout:
    ``MyDrive/clara_lite/runs/<run>`` exports to ``MyDrive/clara_lite/exports/``), otherwise
    ``<run_dir>/exports/<run>-<stage>.zip``."""
    run_dir = Path(run_dir).resolve()
    base = run_dir.parent.parent if run_dir.parent.name == "runs" else run_dir
    return base / "exports" / f"{run_dir.name}-{stage}.zip"


def _newest_final_stage(run: Run) -> str:
    final = run.newest_final()
    if final is not None:
        return final.parent.name
    status = run.status()
    todo = next(s for s in ORDER if status[s] != "final")
    states = ", ".join(f"{s}: {v}" for s, v in status.items())
    raise ExportError(f"No final stage to export in {run.root} ({states}). Finish training first: "
                      f"`clara-lite train --stage {todo} --run-dir {run.root}` (a rerun resumes)")


def _zipinfo(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = size
    return info


def _add_file(zf: zipfile.ZipFile, path: Path, name: str) -> dict:
    """Copy ``path`` into the zip, hashing the bytes actually written (one read of each file)."""
    h, size = hashlib.sha256(), path.stat().st_size
    with open(path, "rb") as src, zf.open(_zipinfo(name, size), "w", force_zip64=size > zipfile.ZIP64_LIMIT) as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            h.update(block)
            dst.write(block)
    return {"sha256": h.hexdigest(), "size": size}


def _add_bytes(zf: zipfile.ZipFile, name: str, data: bytes) -> dict:
    zf.writestr(_zipinfo(name, len(data)), data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


# --------------------------------------------------------------------------- model card


def model_card(run: Run, stage: str, zip_name: str) -> str:
    """The README.md of an export: what was trained, on what, where, and how to load it."""
    config = ClaraConfig.load(run.final_dir(stage))
    adapters = sorted(p.name for p in (run.final_dir(stage) / "adapters").iterdir())
    init = next((e["init_from"] for e in run.data["stages"].values() if e.get("init_from")), None)
    rows = []
    for name in config.trained_stages:
        entry = run.data["stages"].get(name, {})
        summary = _summary(run, name) or entry.get("final")
        if summary is None:  # trained in another run, brought in with --init-from
            rows.append(f"| {name} | - | - | before this run (init_from {init or '?'}) | - | - | - |")
            continue
        metrics = summary.get("final_metrics", {})
        others = ", ".join(f"{k} {_num(v)}" for k, v in metrics.items()
                           if k not in ("loss", "lr", "elapsed_s", "tokens_per_s"))
        data = entry.get("data", {})
        rows.append(f"| {name} | {summary.get('steps', '?')} | {_num(metrics.get('loss', '?'))} | {others or '-'} "
                    f"| `{data.get('path', '?')}` | {data.get('rows', '?')} | `{data.get('sha256', '?')[:16]}` |")
    sessions = run.data.get("sessions", [])
    hardware = [f"- {s['stage']}, session of {s['started']}: {_device(s['hardware'])}" for s in sessions]
    versions = sorted({", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items()) for s in sessions})
    base = config.base_model
    qr = "query_reasoner" in adapters
    usage = ('answers, top = model.generate_from_questions(["Who wrote it?"], [docs], top_k=2)  # retrieves'
             if qr else 'answers = model.generate_from_text(["Who wrote it?"], [docs])  # reads all docs')
    return "\n".join([
        f"# {run.root.name} ({stage}): a clara_lite CLaRa model",
        "",
        "LoRA adapters (encoder, decoder" + (", query_reasoner" if qr else "") + ") and CLaRa's added-token "
        "embeddings for a base model, which is not included: it is loaded by name when the zip is opened.",
        "",
        f"- base model: `{base}`",
        f"- stages completed: {', '.join(config.trained_stages) or 'none'} (exported: {stage})",
        f"- adapters: {', '.join(adapters)}",
        f"- compression: {config.doc_max_length} document tokens -> {config.n_mem} memory vectors "
        f"(compr_rate {config.compr_rate}); LoRA r={config.lora_r}, alpha={config.alpha}",
        "",
        "## Training",
        "",
        "| stage | steps | final loss | other final metrics | data | rows | data sha256 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Hardware",
        "",
        *(hardware or ["- not recorded"]),
        "",
        "## Library versions",
        "",
        *[f"- training: {v}" for v in versions],
        f"- exported with clara_lite {__version__}",
        "",
        "## How to load",
        "",
        "```python",
        "from clara_lite import ClaraModel",
        "",
        f'model = ClaraModel.from_pretrained("{zip_name}")  # offline: base_path="/path/to/{base}"',
        'docs = ["Ada Lovelace wrote the first program.", "Paris is in France."]',
        usage,
        "```",
        "",
        "```bash",
        f'clara-lite ask --model {zip_name} --question "Who wrote it?" --docs docs.jsonl  # [--base-path P]',
        "```",
        "",
    ])


def _summary(run: Run, stage: str) -> dict | None:
    path = run.final_dir(stage) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _device(hw: dict) -> str:
    d = hw.get("device", {})
    mem = f", {d['total_mem_gb']} GB" if d.get("total_mem_gb") else ""
    return (f"{d.get('kind', '?')} {d.get('name', '?')}{mem}; {hw.get('dtype', '?')}, mixed precision "
            f"{hw.get('mixed_precision', '?')}, attention {hw.get('attn_implementation', '?')}")


# --------------------------------------------------------------------------- import


def open_zip(path, **kwargs):
    """Extract (or reuse) an exported zip and load it; ``ClaraModel.from_pretrained("x.zip")`` lands here.

    ``cache_dir`` is the clara_lite cache root (default ``models.cache_dir()``); the zip unpacks
    into ``<cache_dir>/zips/<sha256 of the zip>[:16]``. Other ``kwargs`` go to ``load_model``.
    """
    from .saving import load_model

    cache = kwargs.pop("cache_dir", None)
    folder = extract_zip(path, Path(cache) / "zips" if cache else None)
    check_base(folder, kwargs, source=path)
    return load_model(folder, **kwargs)


def check_base(folder, kwargs: dict, source=None) -> None:
    """Fail naming the base model and ``base_path`` when the base cannot be found on this machine."""
    from .models import UnknownModelError, resolve

    base, given = ClaraConfig.load(folder).base_model, kwargs.get("base_path")
    try:
        resolve(str(given or base))
    except UnknownModelError as err:
        where = f"base_path {str(given)!r} (for base model {base!r})" if given else f"its base model {base!r}"
        raise BaseModelMissing(
            f"{source or folder} needs {where}, which is not on this machine. Pass a local copy of {base!r}: "
            f"base_path='/path/to/base' in Python, --base-path P on the command line.\n{err}") from None


def extract_zip(path, root=None, *, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Safely unpack an exported zip into ``root/<sha256 of the zip>[:16]`` and return that folder.

    A folder already there is reused when it still matches its manifest. ``root`` defaults to
    ``models.cache_dir()/"zips"``. Raises :class:`ZipImportError` naming what is wrong.
    """
    from .models import cache_dir

    path = Path(path)
    root = Path(root) if root else cache_dir() / "zips"
    target = root / sha256_file(path)[:16]
    if target.is_dir():
        problem = check_folder(target)
        if problem is None:
            return target
        log.warning("Unpacking %s again: the copy in %s is damaged (%s)", path, target, problem)
        shutil.rmtree(target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        tmp.chmod(0o755)
        try:
            _unpack(path, tmp, max_bytes)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise ZipImportError(f"{path} is not a readable zip (truncated or corrupt: {err}); "
                                 "download or export it again") from None
        try:
            os.rename(tmp, target)
        except OSError:  # another process unpacked the same zip meanwhile
            if check_folder(target) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unpack(path: Path, folder: Path, max_bytes: int) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = _members(path, zf.infolist())
        if MANIFEST not in infos:
            raise ZipImportError(f"{path} has no {MANIFEST}: not a clara_lite export (make one with "
                                 "`clara-lite export --run-dir D`)")
        if infos[MANIFEST].file_size > MAX_MANIFEST_BYTES:
            raise ZipImportError(f"{path}: {MANIFEST} declares {infos[MANIFEST].file_size} bytes, over the "
                                 f"{MAX_MANIFEST_BYTES} a manifest may have")
        raw = _read(zf, infos[MANIFEST], infos[MANIFEST].file_size)
        files = _manifest_files(f"{path}: {MANIFEST}", raw)
        names = set(infos) - {MANIFEST}
        missing, extra = sorted(set(files) - names), sorted(names - set(files))
        if missing:
            raise ZipImportError(f"{path} lacks {', '.join(missing)}, which its manifest lists: an incomplete "
                                 "copy? Download or export it again")
        if extra:
            raise ZipImportError(f"{path} holds {', '.join(extra)}, which its manifest does not list: refusing "
                                 "a zip that was changed after export")
        for name, meta in files.items():
            if infos[name].file_size != meta["size"]:
                raise ZipImportError(f"{path}: {name} declares {infos[name].file_size} bytes unpacked but the "
                                     f"manifest says {meta['size']} (a zip bomb or a damaged zip)")
        total = sum(meta["size"] for meta in files.values())
        if total > max_bytes:
            raise ZipImportError(f"{path} would unpack to {total} bytes, over the {max_bytes}-byte limit "
                                 "(a model export holds adapters, not a base model)")
        for name in sorted(files):
            data_sha = _extract(zf, infos[name], folder / name, files[name]["size"])
            if data_sha != files[name]["sha256"]:
                raise ZipImportError(f"{path}: {name} does not match its sha256 in the manifest: the zip was "
                                     "modified or damaged; download or export it again")
        (folder / MANIFEST).write_bytes(raw)


def _members(path: Path, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """Member name -> info, after refusing anything that could write outside the folder."""
    if len(infos) > MAX_MEMBERS:
        raise ZipImportError(f"{path} has {len(infos)} members, more than the {MAX_MEMBERS} an export may have")
    out, seen = {}, set()
    for info in infos:
        name, mode = info.filename, info.external_attr >> 16
        if not _safe_name(name.rstrip("/")):
            raise ZipImportError(f"{path}: unsafe member name {name!r} (absolute, '..', backslash or drive "
                                 "letter: it could write outside the extraction folder)")
        if stat.S_ISLNK(mode):
            raise ZipImportError(f"{path}: member {name!r} is a symbolic link; exports never hold links")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ZipImportError(f"{path}: member {name!r} is not a regular file (mode {oct(mode)})")
        if info.flag_bits & 0x1:
            raise ZipImportError(f"{path}: member {name!r} is encrypted; exports are not")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ZipImportError(f"{path}: member {name!r} uses compression {info.compress_type}; "
                                 "only stored and deflated members are read")
        if info.is_dir():
            continue
        if name.casefold() in seen:  # twice, or twice on a case-insensitive disk
            raise ZipImportError(f"{path}: member {name!r} appears twice")
        seen.add(name.casefold())
        out[name] = info
    return out


def _safe_name(name: str) -> bool:
    return bool(_SAFE_NAME.match(name)) and all(part not in (".", "..") for part in name.split("/"))


def _manifest_files(where: str, raw: bytes) -> dict[str, dict]:
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ZipImportError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise ZipImportError(f"{where}: kind is {kind!r}, not {KIND!r}: not a clara_lite model export")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ZipImportError(f"{where}: unknown format_version {version!r} (this clara_lite reads "
                             f"{FORMAT_VERSION})" + ("; upgrade clara_lite" if newer else ""))
    files = manifest.get("files")
    ok = isinstance(files, dict) and all(
        isinstance(meta, dict) and isinstance(meta.get("size"), int) and meta["size"] >= 0
        and isinstance(meta.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
        for meta in files.values())
    if not ok:
        raise ZipImportError(f"{where}: 'files' must map each path to its sha256 and size")
    for name in files:
        if not _safe_name(name) or name == MANIFEST:
            raise ZipImportError(f"{where}: unsafe path {name!r} in the manifest")
    return files


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    with zf.open(info) as src:
        data = src.read(limit + 1)
    if len(data) > limit:
        raise ZipImportError(f"{info.filename} unpacks to more than its declared {limit} bytes (a zip bomb?)")
    return data


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, size: int) -> str:
    """Write one member, counting bytes (declared sizes can lie) and hashing them; -> sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, written = hashlib.sha256(), 0
    with zf.open(info) as src, open(dest, "xb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            written += len(block)
            if written > size:
                raise ZipImportError(f"{info.filename} unpacks to more than the {size} bytes the manifest "
                                     "lists (a zip bomb?)")
            h.update(block)
            dst.write(block)
    if written != size:
        raise ZipImportError(f"{info.filename} unpacks to {written} bytes, the manifest lists {size}")
    return h.hexdigest()


def check_folder(folder) -> str | None:
    """None when an unpacked export still matches its manifest (no file missing, changed or added)."""
    folder = Path(folder)
    try:
        files = _manifest_files(str(folder / MANIFEST), (folder / MANIFEST).read_bytes())
    except (OSError, ZipImportError) as err:
        return str(err)
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    if present != set(files):
        return f"files differ from the manifest: {sorted(present ^ set(files))}"
    for name, meta in files.items():
        path = folder / name
        if path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
            return f"{name} does not match the manifest"
    return None


# --------------------------------------------------------------------------- asking a model


def load(path, **kwargs):
    """``ClaraModel.from_pretrained`` for a zip or folder, naming the base model when it is missing."""
    from .saving import load_model

    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        check_base(path, kwargs)
    return load_model(path, **kwargs)


def read_docs(path) -> list[str]:
    """Documents from a folder of .txt/.md files (one each, by name) or a JSONL file whose lines are
    ``{"doc": ...}``, ``{"text": ...}``, a JSON string, or training rows (their docs). Repeats dropped.

    >>> read_docs("data/stage3.jsonl")[:1]  # doctest: +SKIP
    ['Ada lives in Paris.']
    """
    from .data import DOC_KEYS

    path = Path(path)
    docs: list[str] = []
    if path.is_dir():
        docs = [p.read_text(encoding="utf-8").strip() for p in sorted(path.iterdir())
                if p.is_file() and p.suffix.lower() in (".txt", ".md")]
    elif path.is_file():
        for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            found = [row] if isinstance(row, str) else None
            if isinstance(row, dict):
                found = next(([row[k]] for k in ("doc", "text") if isinstance(row.get(k), str)), None) or next(
                    (row[k] for k in DOC_KEYS if isinstance(row.get(k), list)), None)
            if not found or not all(isinstance(d, str) for d in found):
                raise ValueError(f'{path}:{lineno}: expected {{"doc": "..."}}, {{"text": "..."}}, a JSON string, '
                                 'or a training row with "docs"')
            docs.extend(found)
    else:
        raise FileNotFoundError(f"documents not found: {path} (a .jsonl file or a folder of .txt/.md files)")
    docs = list(dict.fromkeys(d.strip() for d in docs if d.strip()))
    if not docs:
        raise ValueError(f"no documents in {path}")
    return docs


def answer(model, question: str, docs: list[str], *, top_k: int | None = None,
           max_new_tokens: int = 64) -> tuple[str, list[int] | None]:
    """Answer ``question`` from ``docs`` -> (answer, indices of the retrieved docs, or None when all
    were read). A model with a query reasoner (stage3) retrieves the top-k; others read every doc."""
    if "query_reasoner" in model.adapter_names:
        answers, idx = model.generate_from_questions([question], [docs], max_new_tokens=max_new_tokens, top_k=top_k)
        return answers[0], idx[0].tolist()
    if len(docs) > MAX_DOCS_WITHOUT_RETRIEVER:
        raise ValueError(f"{len(docs)} documents, but a model without a retriever (query_reasoner) reads all of "
                         f"them at once (at most {MAX_DOCS_WITHOUT_RETRIEVER}): pass fewer documents, or use a "
                         "stage3 model, which retrieves the top-k")
    return model.generate_from_text([question], [docs], max_new_tokens=max_new_tokens)[0], None
