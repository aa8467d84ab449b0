"""Fetch data and models from Google Drive links, Drive ids and plain HTTP(S) URLs.

For example::

    download("https://drive.google.com/file/d/<id>/view", "data/stage1.jsonl")

Why a wrapper: a download lands in a staging folder beside ``dest`` and moves into place only when
complete; a rerun after an interruption continues the partial file (where the server allows byte
ranges); an existing ``dest`` with other content is kept unless ``overwrite=True``; every failure is a
:class:`DownloadFailed` naming the link and what to do.

Why the bytes are fetched here (with requests) and not by ``gdown.download``: Colab ships gdown 5.2.2,
which checks no HTTP status (a 404 page is saved as the user's file), has no timeout (a stalled
server hangs the notebook) and no retries, while gdown 6.3+ has all three. One transfer of our own
behaves the same on every gdown the requirements allow. gdown still does what is Drive's own: reading
the "can't scan this file for viruses" confirmation page and listing a shared folder.

URLs are logged without credentials or query strings (signed links carry tokens there), through
:func:`clara_lite.core.secrets.redact`, the one redaction every layer uses.
"""

from __future__ import annotations

import email.message
import hashlib
import inspect
import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from ..core.secrets import redact  # one redaction for every layer (re-exported for callers)

log = logging.getLogger(__name__)

TIMEOUT_S = (10, 120)  # (connect, between bytes): offline fails in seconds, a slow link still runs
MAX_BYTES = 20 << 30  # what one download may write: no document set or dataset file clara_lite reads is larger
MAX_EXPANSION = 100  # a body the server compressed though asked not to may grow this much: more is a bomb
RETRIES = 2  # further tries after a transfer breaks off, stalls or meets a busy server; each continues
CHUNK = 64 << 10  # small: when a connection drops, urllib3 discards the chunk it was filling
DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")
DRIVE_FILE_URL = "https://drive.google.com/uc?id={id}&export=download"
# the agent gdown sends when it fetches a Drive file
USER_AGENT = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_1) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/39.0.2171.95 Safari/537.36")
VALIDATOR = ".validator"  # beside a partial file: the ETag / Last-Modified its bytes came with
BUSY = (429, 500, 502, 503, 504)  # answers another try may fix
HINTS = {404: "not found: check the link", 401: "access denied: the link is private or expired",
         403: "access denied: the link is private or expired", 410: "gone: the file was deleted"}
_DRIVE_ID = re.compile(r"^[-\w]{25,}$")
_DRIVE_PATH_ID = re.compile(r"/d/([-\w]{25,})")


class DownloadFailed(OSError):
    """A download that could not be done; the message names the link and what to do."""


def download(url_or_id: str, dest: str | Path, *, overwrite: bool = False, quiet: bool = False,
             timeout: float | tuple[float, float] = TIMEOUT_S, retries: int = RETRIES,
             max_bytes: int = MAX_BYTES) -> Path:
    """Download a Drive file link, Drive folder link, Drive file id or http(s) URL to ``dest``.

    ``dest`` is the file to write, or an existing folder (the file keeps the server's name); for a
    Drive folder link it is the folder to fill. Returns the path written. An identical file already
    at ``dest`` is fine; a different one raises ``FileExistsError`` unless ``overwrite=True``.
    ``timeout`` is seconds to connect and then between bytes (one number: both); ``retries`` is how
    many more tries, each continuing the bytes received, a broken, stalled or busy transfer gets.
    Raises :class:`DownloadFailed` when offline, or the link is private, wrong or gone, or the
    transfer keeps failing (then the received bytes are kept, and the same call continues them), or
    the body is over ``max_bytes``, or a compressed body expands more than :data:`MAX_EXPANSION` times
    (nothing of it is kept).
    """
    try:
        import gdown  # noqa: F401  (and requests, which it brings)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("downloads need gdown: pip install 'gdown>=5.1'") from err
    source, dest = str(url_or_id).strip(), Path(dest)
    kind, file_id = _kind(source)
    shown = redact(source)
    log.info("Downloading %s -> %s", shown, dest)
    with _Transfer(shown, timeout, retries, quiet, max_bytes) as transfer:
        if kind == "folder":
            return _download_folder(transfer, source, dest, overwrite)
        into_folder = dest.is_dir() or str(dest).endswith(("/", os.sep))
        directory = dest if into_folder else dest.parent
        # a fixed staging name per link: a rerun finds and continues the partial file
        staging = directory / f".clara-download-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
        part = staging / "download.part"
        url = DRIVE_FILE_URL.format(id=file_id) if file_id else source
        name = _keep_partial(staging, transfer.fetch, url, part, drive=file_id is not None)
    final = directory / name if into_folder else dest
    try:
        _place({part: final}, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _kind(source: str) -> tuple[str, str | None]:
    """("folder" | "file", the Drive file id or None for a plain URL)."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        if parts.hostname not in DRIVE_HOSTS:
            return "file", None
        if "/folders/" in parts.path:
            return "folder", None
        ids = parse_qs(parts.query).get("id") or _DRIVE_PATH_ID.findall(parts.path)
        if not ids:
            raise ValueError(f"{redact(source)!r} names no Drive file: share the file and use its link "
                             "(https://drive.google.com/file/d/<id>/view)")
        return "file", ids[0]
    if _DRIVE_ID.match(source):
        return "file", source
    raise ValueError(f"{redact(source)!r} is neither an http(s) URL nor a Google Drive id "
                     "(the long part of a share link: https://drive.google.com/file/d/<id>/view)")


def _download_folder(transfer: _Transfer, source: str, dest: Path, overwrite: bool) -> Path:
    staging = dest.parent / f".{dest.name}.clara-download"
    files = transfer.list_folder(source)
    moves = {}
    for item in files:  # each a Drive file: its id and its path inside the folder
        part = staging / item.path
        _keep_partial(staging, transfer.fetch, DRIVE_FILE_URL.format(id=item.id), part, drive=True)
        moves[part] = dest / item.path
    try:
        _place(moves, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _keep_partial(staging: Path, fetch, *args, **kwargs):
    """``fetch(*args)``; after a failure the staging folder stays only if it holds bytes to continue."""
    try:
        return fetch(*args, **kwargs)
    except BaseException:
        if not any(p.is_file() and p.stat().st_size and p.suffix != VALIDATOR for p in staging.rglob("*")):
            shutil.rmtree(staging, ignore_errors=True)
        raise


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


class _Retry(Exception):
    """One try failed in a way another try may fix. ``str()``: what happened, for the log."""

    def why(self, shown: str, tries: int) -> str:
        """The :class:`DownloadFailed` message once no try is left."""
        return (f"{shown} {self} ({tries} {'try' if tries == 1 else 'tries'}). Run the same download again "
                "to continue from the bytes received.")


class _Unreachable(_Retry):
    def __init__(self, err: Exception):
        reason = getattr(err.args[0], "reason", None) if err.args else None  # urllib3's MaxRetryError
        self.reason = type(reason or err).__name__
        super().__init__(f"could not connect ({self.reason})")

    def why(self, shown, tries):
        return (f"Could not reach {urlsplit(shown).hostname or 'drive.google.com'} for {shown} ({self.reason}): "
                "offline, or the server is down. Check the connection and run the same download again; a "
                "partial file is continued.")


class _Stalled(_Retry):
    def __init__(self, timeout):
        super().__init__(f"stalled: no data for {timeout[1] if isinstance(timeout, tuple) else timeout} s")


class _BrokeOff(_Retry):
    def __init__(self, received: int, total: int | None):
        super().__init__(f"broke off at {received} of {total if total is not None else 'unknown'} bytes")


class _Busy(_Retry):
    def __init__(self, code: int):
        super().__init__(f"answered HTTP {code}")

    def why(self, shown, tries):
        return f"{shown} {self} ({tries} {'try' if tries == 1 else 'tries'}): the server is failing, try again later"


def _body_error(err: Exception, received: int, total: int | None, timeout) -> _Retry:
    """What a requests error while reading a body means: a stall (read timeout) or a cut connection."""
    from urllib3.exceptions import ReadTimeoutError

    if err.args and isinstance(err.args[0], ReadTimeoutError):  # requests wraps it in ConnectionError
        return _Stalled(timeout)
    return _BrokeOff(received, total)  # urllib3 2: a body shorter than Content-Length is an error too


class _Transfer:
    """One requests session fetching for one :func:`download` call: statuses, timeouts, retries, resume."""

    def __init__(self, shown: str, timeout, retries: int, quiet: bool, max_bytes: int = MAX_BYTES):
        import requests

        self.max_bytes = max_bytes
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, not {retries!r}")
        self.requests, self.shown, self.timeout, self.retries, self.quiet = requests, shown, timeout, retries, quiet
        self.session = requests.Session()
        # byte offsets for resuming must count the bytes on disk, not a decompressed stream
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})

    def __enter__(self) -> _Transfer:
        return self

    def __exit__(self, *exc) -> None:
        self.session.close()

    def fetch(self, url: str, part: Path, *, drive: bool = False) -> str:
        """Fetch ``url`` into ``part`` (continuing what it holds); returns the file's name on the server."""
        part.parent.mkdir(parents=True, exist_ok=True)
        # a Drive link's file URL once found, and the name the server gives the file
        state = {"url": None if drive else url, "name": None, "fallback": "download" if drive else _name_from_url(url)}
        tries = self.retries + 1

        def waiting(retry: RetryCallState) -> None:
            log.warning("%s %s; trying again in %.1f s (try %d of %d)", self.shown, retry.outcome.exception(),
                        retry.next_action.sleep, retry.attempt_number + 1, tries)

        # 0.5 s, 1 s, 2 s ... at most 10 s between tries; each try continues the partial file
        retrying = Retrying(stop=stop_after_attempt(tries), wait=wait_exponential(multiplier=0.5, max=10),
                            retry=retry_if_exception_type(_Retry), before_sleep=waiting)
        try:
            retrying(self._try, url, part, state)
        except RetryError as gave_up:
            raise DownloadFailed(gave_up.last_attempt.exception().why(self.shown, tries)) from None
        return state["name"] or state["fallback"]

    def list_folder(self, source: str) -> list:
        """The files of a shared Drive folder (gdown reads Drive's folder page), none downloaded yet."""
        import gdown

        kwargs = {"url": source, "quiet": self.quiet, "skip_download": True}
        if "timeout" in inspect.signature(gdown.download_folder).parameters:
            kwargs["timeout"] = self.timeout
        else:  # gdown < 6.3: the folder page (small; the files are fetched here, with the timeout) waits freely
            log.info("gdown %s reads the folder page without a timeout", getattr(gdown, "__version__", "?"))
        refused = tuple(getattr(gdown.exceptions, n) for n in ("DownloadError", "FileURLRetrievalError")
                        if hasattr(gdown.exceptions, n))  # gdown 6 raises; gdown 5 returns None
        try:
            files = gdown.download_folder(**kwargs)
        except self.requests.Timeout:
            raise DownloadFailed(_Stalled(self.timeout).why(self.shown, 1)) from None
        except self.requests.ConnectionError as err:
            raise DownloadFailed(_Unreachable(err).why(self.shown, 1)) from None
        except refused:
            files = None
        if not files:
            raise DownloadFailed(f"Google Drive listed nothing to download at {self.shown}: is the folder "
                                 "empty, or not shared as 'Anyone with the link'?")
        return files

    def _try(self, url: str, part: Path, state: dict) -> None:
        have = part.stat().st_size if part.exists() else 0
        if state["url"] is None:  # a Drive link: its first answer is the file or a page linking to it
            response, state["url"] = self._drive_file(url)
            if have:  # a rerun: continue from the file URL instead of taking the whole body again
                response.close()
                response = None
        else:
            response = None
        if response is None:
            headers = {"Range": f"bytes={have}-"} if have else {}
            validator = part.with_name(part.name + VALIDATOR)
            if have and validator.is_file():  # a changed file is sent whole, never spliced onto old bytes
                headers["If-Range"] = validator.read_text()
            response = self._get(state["url"], headers)
        with response:
            state["name"] = state["name"] or _name_from_headers(response)
            self._write(response, part, have, state["name"] or state["fallback"])

    def _drive_file(self, url: str):
        from gdown.download import get_url_from_gdrive_confirmation
        from gdown.exceptions import FileURLRetrievalError

        for _ in range(3):  # the file, or a page with a confirmation link to it
            response = self._get(url, {})
            if "Content-Disposition" in response.headers or "html" not in response.headers.get("Content-Type", ""):
                return response, url
            with response:
                page = self._text(response)
            try:
                url = get_url_from_gdrive_confirmation(page)
            except FileURLRetrievalError:
                break
        raise DownloadFailed(
            f"Google Drive would not hand out {self.shown}: the file is private, deleted, or over its download "
            "quota. Share it as 'Anyone with the link' (or download it in a browser and pass the local path)."
        )

    def _get(self, url: str, headers: dict):
        requests = self.requests
        try:
            response = self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.ConnectTimeout as err:
            raise _Unreachable(err) from None
        except requests.Timeout:
            raise _Stalled(self.timeout) from None
        except requests.ConnectionError as err:
            raise _Unreachable(err) from None
        except requests.RequestException as err:  # requests' messages repeat the URL (tokens too): not chained
            raise DownloadFailed(f"Downloading {self.shown} failed: {type(err).__name__}") from None
        code = response.status_code
        if code in BUSY:
            response.close()
            raise _Busy(code)
        if code >= 400 and not (code == 416 and "Range" in headers):
            response.close()
            raise DownloadFailed(f"{self.shown} answered HTTP {code} ({HINTS.get(code, 'try again later')})")
        return response

    def _text(self, response) -> str:
        try:
            return response.text
        except self._body_errors as err:
            raise _body_error(err, 0, _length(response.headers), self.timeout) from None

    @property
    def _body_errors(self) -> tuple[type[Exception], ...]:
        exceptions = self.requests.exceptions
        return exceptions.ConnectionError, exceptions.ChunkedEncodingError, exceptions.ContentDecodingError

    def _write(self, response, part: Path, have: int, name: str) -> None:
        """Append the body to ``part`` (or restart it); raises _Retry unless ``part`` is then complete."""
        headers, validator = response.headers, part.with_name(part.name + VALIDATOR)
        resumed = have > 0 and response.status_code == 206
        if response.status_code == 416:  # nothing after ``have``: complete already, or the file changed
            if _range_total(headers) == have:
                return
            part.unlink()
            raise _BrokeOff(0, None)
        if have and not resumed:
            log.warning("%s cannot continue a partial download; downloading it again", self.shown)
        if resumed and _range_start(headers) != have:
            part.unlink()
            raise _BrokeOff(0, _range_total(headers))
        if not resumed:
            have = 0
            tag = headers.get("ETag", "")
            tag = tag if tag and not tag.startswith("W/") else headers.get("Last-Modified", "")
            if tag:
                validator.write_text(tag)
            else:
                validator.unlink(missing_ok=True)
        length = _length(headers)
        total = (_range_total(headers) or (None if length is None else have + length)) if resumed else length
        received = have
        from tqdm.auto import tqdm

        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=name, disable=self.quiet) as bar:
            encoded = headers.get("Content-Encoding", "identity").lower() != "identity"
            try:
                for chunk in response.iter_content(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    self._check_size(response, part, received - have, encoded)
            except self._body_errors as err:
                raise _body_error(err, received, total, self.timeout) from None
        if total is not None and received != total:
            if received > total:  # more than announced: these bytes cannot be trusted
                part.unlink()
            raise _BrokeOff(received, total)


    def _check_size(self, response, part: Path, received: int, encoded: bool) -> None:
        wire = getattr(response.raw, "tell", lambda: 0)() or 0  # bytes off the network, before decoding
        if received > self.max_bytes:
            why = f"is over {self.max_bytes / 1e9:.1f} GB (max_bytes)"
        elif encoded and received > MAX_EXPANSION * max(wire, CHUNK):
            why = (f"came compressed and expands more than {MAX_EXPANSION}x ({wire} bytes sent became {received}): "
                   "a decompression bomb, or not a file to download")
        else:
            return
        part.unlink(missing_ok=True)
        raise DownloadFailed(f"{self.shown}: the download {why}; nothing of it is kept")


def _length(headers) -> int | None:
    """The body's size from Content-Length, when that counts the bytes we write (no encoding)."""
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    try:
        return int(headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _range_start(headers) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", headers.get("Content-Range", "").strip())
    return int(match[1]) if match else None


def _range_total(headers) -> int | None:
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", headers.get("Content-Range", "").strip())
    return int(match[1]) if match else None


def _name_from_headers(response) -> str | None:
    """The file name in Content-Disposition (``filename*=UTF-8''…`` too), made safe as one path part."""
    value = response.headers.get("Content-Disposition")
    if not value:
        return None
    msg = email.message.Message()
    msg["Content-Disposition"] = value
    return _safe_name(msg.get_filename() or "")


def _name_from_url(url: str) -> str:
    return _safe_name(unquote(urlsplit(url).path.rsplit("/", 1)[-1])) or "download"


def _safe_name(name: str) -> str | None:
    name = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "").strip()
    return None if name in ("", ".", "..") else name
