"""Fetch data and models from Google Drive links, Drive ids and plain HTTP(S) URLs (through gdown).

>>> download("https://drive.google.com/file/d/<id>/view", "data/stage1.jsonl")  # doctest: +SKIP

Why a wrapper: gdown's failures (a private link, no network, a 404) surface as library exceptions
that say little about what to do, and it would overwrite a file that is already there. Here a
download lands in a staging folder beside ``dest`` and moves into place only when complete; a
rerun after an interruption continues the partial file (where the server allows byte ranges); an
existing ``dest`` with other content is kept unless ``overwrite=True``.

URLs are logged without credentials or query strings (signed links carry tokens there), through
:func:`clara_lite.secrets.redact`, the one redaction every layer uses.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from ..secrets import redact  # noqa: F401  (one redaction for every layer; re-exported for callers)

log = logging.getLogger(__name__)

TIMEOUT_S = (10, 120)  # (connect, between bytes): offline fails in seconds, a slow link still runs
RETRIES = 2  # gdown continues a dropped transfer this many times before giving up
DRIVE_HOSTS = ("drive.google.com", "docs.google.com")
_DRIVE_ID = re.compile(r"^[-\w]{25,}$")


class DownloadFailed(OSError):
    """A download that could not be done; the message names the link and what to do."""


def download(url_or_id: str, dest: str | Path, *, overwrite: bool = False, quiet: bool = False) -> Path:
    """Download a Drive file link, Drive folder link, Drive file id or http(s) URL to ``dest``.

    ``dest`` is the file to write, or an existing folder (the file keeps the server's name); for a
    Drive folder link it is the folder to fill. Returns the path written. An identical file already
    at ``dest`` is fine; a different one raises ``FileExistsError`` unless ``overwrite=True``.
    Raises :class:`DownloadFailed` when offline, or the link is private, wrong or gone.
    """
    try:
        import gdown
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("downloads need gdown: pip install 'gdown>=5.0'") from err
    source, dest = str(url_or_id).strip(), Path(dest)
    kind = _kind(source)
    shown = redact(source)
    # gdown prints the full URL while downloading: keep it quiet when the URL may hold a token
    quiet = quiet or shown != source
    log.info("Downloading %s -> %s", shown, dest)
    if kind == "folder":
        return _download_folder(gdown, source, shown, dest, overwrite, quiet)
    into_folder = dest.is_dir() or str(dest).endswith(("/", os.sep))
    directory = dest if into_folder else dest.parent
    # a fixed staging name per link: a rerun finds and continues the partial file
    staging = directory / f".clara-download-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    staging.mkdir(parents=True, exist_ok=True)
    output = str(staging) + os.sep if into_folder else str(staging / dest.name)
    kwargs = {"id": source} if kind == "id" else {"url": source, "fuzzy": True}
    got = Path(_fetch(gdown, shown, staging, gdown.download, output=output, quiet=quiet, **kwargs))
    final = directory / got.name if into_folder else dest
    try:
        _place({got: final}, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _kind(source: str) -> str:
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        if parts.hostname in DRIVE_HOSTS and "/folders/" in parts.path:
            return "folder"
        return "url"
    if _DRIVE_ID.match(source):
        return "id"
    raise ValueError(f"{redact(source)!r} is neither an http(s) URL nor a Google Drive id "
                     "(the long part of a share link: https://drive.google.com/file/d/<id>/view)")


def _download_folder(gdown, source: str, shown: str, dest: Path, overwrite: bool, quiet: bool) -> Path:
    staging = dest.parent / f".{dest.name}.clara-download"
    staging.mkdir(parents=True, exist_ok=True)
    got = _fetch(gdown, shown, staging, gdown.download_folder, url=source, output=str(staging), quiet=quiet)
    if not got:  # older gdown returns None instead of raising
        raise DownloadFailed(f"Google Drive listed nothing to download at {shown}: is the folder empty, "
                             "or not shared as 'Anyone with the link'?")
    files = [p for p in staging.rglob("*") if p.is_file()]
    try:
        _place({p: dest / p.relative_to(staging) for p in files}, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _place(moves: dict[Path, Path], overwrite: bool) -> None:
    """Move downloaded files into place; all or nothing when some target holds other content."""
    same = {dst: dst.exists() and _same(src, dst) for src, dst in moves.items()}  # hashed once
    clashes = [dst for dst in moves.values() if dst.exists() and not same[dst]]
    if clashes and not overwrite:
        names = ", ".join(str(p) for p in clashes[:5]) + (" …" if len(clashes) > 5 else "")
        raise FileExistsError(f"{names} already exist(s) with different content: pass overwrite=True "
                              "to replace, or download to another destination")
    for src, dst in moves.items():
        if same[dst]:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(src, dst)


def _same(a: Path, b: Path) -> bool:
    return b.is_file() and a.stat().st_size == b.stat().st_size and _sha256(a) == _sha256(b)


def _sha256(path: Path) -> str:  # not run.sha256_file: importing run would load torch for a download
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(gdown, shown: str, staging: Path, call, **kwargs):
    """Run a gdown call, resuming partial files, with gdown's and requests' errors made plain."""
    import requests

    # older gdown versions lack some of these classes: an empty tuple catches nothing
    failed = getattr(gdown.exceptions, "DownloadError", ())
    private = getattr(gdown.exceptions, "FileURLRetrievalError", ())
    offline = (requests.ConnectionError, requests.Timeout)
    kwargs = _supported(call, **kwargs, resume=True, retries=RETRIES, timeout=TIMEOUT_S)
    try:
        try:
            return call(**kwargs)
        except failed as err:
            if "byte range" not in str(err):
                raise
            # the server cannot continue our partial file: start it over
            log.warning("%s cannot resume a partial download; downloading it again", shown)
            for part in staging.rglob("*.part"):
                part.unlink()
            return call(**{**kwargs, "resume": False})
    except private:
        raise DownloadFailed(
            f"Google Drive would not hand out {shown}: the file is private, deleted, or over its download "
            "quota. Share it as 'Anyone with the link' (or download it in a browser and pass the local path)."
        ) from None
    except requests.HTTPError as err:  # requests' messages repeat the URL (tokens too): never chained
        code = err.response.status_code if err.response is not None else "?"
        hint = {404: "not found: check the link", 401: "access denied: the link is private or expired",
                403: "access denied: the link is private or expired"}.get(code, "try again later")
        raise DownloadFailed(f"{shown} answered HTTP {code} ({hint})") from None
    except offline as err:
        raise _unreachable(shown, err) from None
    except failed as err:
        if isinstance(err.__cause__, offline):  # gdown wraps the last error after retries
            raise _unreachable(shown, err.__cause__) from None
        raise DownloadFailed(f"Downloading {shown} failed: {redact(str(err))}\nRun the same download again to continue.") from None


def _unreachable(shown: str, err: Exception) -> DownloadFailed:
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return DownloadFailed(
        f"Could not reach {urlsplit(shown).hostname or 'drive.google.com'} for {shown} "
        f"({type(reason or err).__name__}): offline, or the server is down. Check the connection and run "
        "the same download again; a partial file is continued."
    )


def _supported(call, **kwargs) -> dict:
    """Drop options this gdown version does not know (``fuzzy`` left in 6; ``timeout``, ``retries`` are new)."""
    params = inspect.signature(call).parameters
    return {k: v for k, v in kwargs.items() if k in params}
