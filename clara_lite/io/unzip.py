"""Unpacking an exported zip safely, wherever it came from (a shared Drive link, an e-mail).

Opening trusts nothing: every member's name, type and size is checked against the manifest before a
byte is written; bytes are counted and hashed while they are extracted; extraction happens in a
temporary folder that is renamed into the cache only when complete, and removed otherwise. Only
JSON and safetensors are read: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from ..core.errors import ClaraError
from ..core.layout import (
    KIND_MODEL,
    MANIFEST,
    ZIPS_DIR,
    ManifestError,
    cache_dir,
    parse_manifest,
    safe_relative,
    sha256_file,
    verify,
)

log = logging.getLogger(__name__)

MAX_UNPACKED_BYTES = 8 << 30  # adapters of a 7B model at r=64 stay far below; a zip bomb does not
MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 1 << 20


class ZipImportError(ClaraError, ValueError):
    """A zip that cannot be trusted or read; the message names the problem."""
    code = "unsafe_zip"


def extract_zip(path, root=None, *, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Safely unpack an exported zip into ``root/<sha256 of the zip>[:16]`` and return that folder.

    A folder already there is reused when it still matches its manifest. ``root`` defaults to
    ``layout.cache_dir()/"zips"``. Raises :class:`ZipImportError` naming what is wrong.
    """
    path = Path(path)
    root = Path(root) if root else cache_dir() / ZIPS_DIR
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
        try:
            files = parse_manifest(raw, f"{path}: {MANIFEST}", KIND_MODEL)
        except ManifestError as err:
            raise ZipImportError(str(err)) from None
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
        if not safe_relative(name.rstrip("/")):
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
    return verify(folder, KIND_MODEL, exact=True)
