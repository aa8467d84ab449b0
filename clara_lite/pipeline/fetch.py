"""A Drive share link or URL -> documents, a dataset file or ready stage files in a local folder.

People keep their material on Drive and share a link: a zip of documents, a folder, or one
JSONL/Parquet dataset file. :func:`fetch` downloads it (:func:`clara_lite.io.drive.download`:
resumable, never overwriting other content), unpacks a zip safely (no member outside the folder,
a size cap against zip bombs) and says what it got, so the next step is the right one
(``data build`` for documents, ``data convert`` for a dataset, training for stage files). A rerun
with the same link reuses what was fetched.

For example::

    fetch("https://drive.google.com/file/d/<id>/view", "drive/fetched").kind
    # -> 'documents'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..core.layout import safe_relative
from ..core.secrets import redact
from ..io.drive import download

log = logging.getLogger(__name__)

MAX_UNPACKED_BYTES = 20 << 30
MAX_MEMBERS = 100_000
DATASET_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".arrow"}
LAYOUT_SUFFIXES = {".pdf", ".docx", ".pptx", ".html", ".htm"}  # formats no dataset comes as


@dataclass
class Fetched:
    path: Path  # the folder (or single file) to use
    kind: str  # "stage files", "dataset" or "documents"

    def format(self) -> str:
        nxt = {"stage files": f"train on it: --data-dir {self.path}",
               "dataset": f"convert it: clara-lite data convert --dataset {self.path} --out-dir DATA_DIR",
               "documents": f"build from it: clara-lite data build --input {self.path} --out DATA_DIR"}[self.kind]
        return f"{self.kind}: {self.path}\nnext, {nxt}"


def classify(path: str | Path) -> str:
    """``stage files`` (a stage1.jsonl), ``dataset`` (data files, no PDF/Office/HTML) or ``documents``."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    names = {p.name for p in files}
    suffixes = {p.suffix.lower() for p in files}
    if "stage1.jsonl" in names:
        return "stage files"
    if suffixes & DATASET_SUFFIXES and not suffixes & LAYOUT_SUFFIXES:
        return "dataset"
    return "documents"


def is_archive(path: Path) -> bool:
    """A zip or a tar (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``: a laptop's hand-off), by content."""
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def archive_stem(path: Path) -> str:
    """The folder name an archive unpacks into: ``docs.zip``, ``docs.tar.gz``, ``docs.tgz`` -> ``docs``."""
    name = path.name
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return f"{name}-unzipped"


def unpack(archive: Path, folder: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """``archive`` (a zip or a tar) unpacked into the new folder ``folder`` (all or nothing); member names may
    not leave it, and a tar's links and devices are refused.

    Nothing is ever replaced: the archive is unpacked into a fresh staging folder beside ``folder`` and moved
    to ``folder`` only when ``folder`` does not exist (:class:`FileExistsError` names it otherwise).
    """
    if os.path.lexists(folder):
        raise FileExistsError(f"{folder} already exists: not unpacking {archive.name} over it; "
                              "move it away or unpack somewhere else")
    is_zip = zipfile.is_zipfile(archive)
    members = _zip_members(archive) if is_zip else _tar_members(archive)
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"{archive.name}: {len(members)} files; more than {MAX_MEMBERS} is not a document set")
    total = sum(size for _, size in members)
    if total > max_bytes:
        raise ValueError(f"{archive.name} unpacks to {total / 1e9:.1f} GB, more than {max_bytes / 1e9:.0f} GB")
    bad = [name for name, _ in members if not safe_relative(name.rstrip("/"))]
    if bad:
        raise ValueError(f"{archive.name}: members outside the folder ({', '.join(bad[:3])}); not unpacked")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        if is_zip:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")  # the stdlib's own guard too: no links out, no devices
        _move_to_new(tmp, folder)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError) as err:
        shutil.rmtree(tmp, ignore_errors=True)  # sizes or data the archive lies about, an unknown method
        raise ValueError(f"{archive}: a damaged archive ({type(err).__name__}: {err}); nothing unpacked: "
                         "download it again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # an archive of one folder: use that folder
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _zip_members(archive: Path) -> list[tuple[str, int]]:
    try:
        with zipfile.ZipFile(archive) as zf:
            return [(i.filename, i.file_size) for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{archive}: not a readable zip ({err}): download it again") from None


def _tar_members(archive: Path) -> list[tuple[str, int]]:
    """(name, size) of a tar's files, after refusing what a document archive never holds: links, devices."""
    try:
        with tarfile.open(archive) as tf:
            infos = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{archive}: not a readable tar ({type(err).__name__}: {err}): download it again") \
            from None
    for info in infos:
        if info.issym() or info.islnk():
            raise ValueError(f"{archive.name}: member {info.name!r} is a link (to {info.linkname!r}); a document "
                             "archive holds files: not unpacked")
        if not (info.isfile() or info.isdir()):
            raise ValueError(f"{archive.name}: member {info.name!r} is not a file or folder (a device or a FIFO); "
                             "not unpacked")
    return [(i.name, i.size) for i in infos if i.isfile()]


def _move_to_new(src: Path, dst: Path) -> None:
    """``src`` renamed to ``dst``, which must not exist (a folder or file there is never replaced).

    Between the check and the rename another process could create ``dst``: rename(2) then fails on a
    file or a non-empty folder, and replaces only an empty folder, so no one's content is lost.
    """
    if os.path.lexists(dst):
        raise FileExistsError(f"{dst} already exists: not replaced; move it away or choose another --out")
    os.rename(src, dst)


def free_name(path: Path) -> Path:
    """``path`` if nothing is there, else the first of ``path-2``, ``path-3``, … that is free."""
    n = 2
    candidate = path
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.name}-{n}")
        n += 1
    return candidate


def _is_html(path: Path) -> bool:
    """A web page (a sign-in or error page) saved under a data file's name."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head"))


def fetch(url_or_id: str, dest: str | Path) -> Fetched:
    """Download ``url_or_id`` into the folder ``dest``, unpack a zip, and classify the result.

    A zip ``name.zip`` unpacks into ``dest/name``, or ``dest/name-2`` (…) when that is taken: nothing
    under ``dest`` is deleted or replaced.
    """

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / f".clara-fetch-{hashlib.sha256(url_or_id.strip().encode()).hexdigest()[:12]}.json"
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if Path(done["path"]).exists():
            log.info("already fetched: %s", done["path"])
            return Fetched(Path(done["path"]), done["kind"])
    before = set(os.listdir(dest))
    got = download(url_or_id, dest)
    if got.is_file() and got.suffix.lower() not in (".html", ".htm") and _is_html(got):
        if got.name not in before:
            got.unlink()
        raise ValueError(f"{redact(url_or_id)} sent a web page (HTML), not the file {got.name}: the link needs "
                         "signing in or is not a download link; share the file with 'anyone with the link', or "
                         "use its direct download URL")
    if is_archive(got):
        # a fresh folder beside the archive: an existing folder of that name is the user's, never replaced
        path = unpack(got, free_name(dest / archive_stem(got)))
        if got.name not in before:  # the archive we downloaded; an identical one already there is the user's
            got.unlink()
    else:
        path = got
    fetched = Fetched(path, classify(path))
    marker.write_text(json.dumps({"path": str(path), "kind": fetched.kind}) + "\n", encoding="utf-8")
    log.info("fetched %s", fetched.format().splitlines()[0])
    return fetched
