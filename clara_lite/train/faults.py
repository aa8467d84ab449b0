"""Write failures while training: which exceptions are one, and what a full disk needs.

The writers a checkpoint goes through report the same full disk three ways: Python's own files
raise ``OSError(ENOSPC)``, tokenizers (Rust) a bare ``Exception("No space left on device (os error
28)")`` and safetensors a ``SafetensorError`` with the same text. :func:`as_write_error` turns each
into an ``OSError`` with its errno, so one retry loop handles them all and any other exception (a
bug) still surfaces as itself.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

_OS_ERROR = re.compile(r"os error (\d+)|code: (\d+)")


def as_write_error(err: BaseException) -> OSError | None:
    """``err`` as an OSError when it is a failed write (whoever raised it), else None."""
    if isinstance(err, OSError):
        return err
    if not isinstance(err, Exception):
        return None
    match = _OS_ERROR.search(str(err))
    if match:
        code = int(match.group(1) or match.group(2))
        return OSError(code, f"{os.strerror(code)} ({type(err).__name__}: {err})")
    if type(err).__name__ == "SafetensorError":  # an I/O failure safetensors words without an errno
        return OSError(errno.EIO, f"{type(err).__name__}: {err}")
    return None


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (0 when it does not exist)."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def free_bytes(where: Path) -> int | None:
    """Free bytes on the filesystem holding ``where`` (its nearest existing parent); None if unknown."""
    where = Path(where)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return shutil.disk_usage(where).free
    except OSError:
        return None


def space_note(where: Path, needed: int) -> str:
    """``needs about X MB free on the disk holding W (Y MB free now)`` for a message."""
    free = free_bytes(where)
    now = f"; {free / 1e6:.1f} MB free now" if free is not None else ""
    return f"a save there needs about {needed / 1e6:.1f} MB free on the disk holding {where}{now}"
