"""What a document path may be: the one check every reader of a folder of documents makes.

A file found under an input folder is read only when

- links followed, it is inside that folder: a link to ``/etc/passwd`` would otherwise be extracted,
  sent to an endpoint, indexed and served back by ``POST /search``;
- its name (relative to the folder) is valid UTF-8: the name is the document's source, which goes
  into JSON, hashes and answers; a file named in another encoding is skipped with a warning that
  shows the name with its undecodable bytes escaped (``\\xe9``), so the rest of the folder is read.

``data extract`` / ``data build`` (:mod:`clara_lite.pipeline.extract`) and ``index build|add``
(:mod:`clara_lite.serve.documents`) both ask :func:`refusal`.

>>> refusal(Path("docs/a.txt"), Path("docs")) is None  # doctest: +SKIP
True
"""

from __future__ import annotations

import os
from pathlib import Path


def inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path``, links followed, is within ``root`` (links followed too)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def shown(name: str | Path) -> str:
    """``name`` printable and encodable: bytes that were not UTF-8 (kept by the OS as surrogates) as ``\\xNN``."""
    return os.fsencode(os.fspath(name)).decode("utf-8", "backslashreplace")


def refusal(path: str | Path, root: str | Path) -> str | None:
    """Why the file ``path`` found under ``root`` may not be read as a document, or None when it may."""
    path, root = Path(path), Path(root)
    try:
        os.fspath(path.relative_to(root)).encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8: rename the file (UTF-8) to include it"
    except ValueError:
        return "not under the input folder: not read"
    if not inside(path, root):
        return f"a link to {shown(path.resolve())}, outside the input folder: not read"
    return None
