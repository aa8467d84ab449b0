"""01_data's further sources: a public dataset by name or folder, and a Drive share link or URL.

:func:`clara_lite.notebook.prepare_data` knows ``example``, ``jsonl`` and ``raw``; :func:`prepare`
adds ``dataset`` (Hugging Face Hub id, short name or Drive folder, converted like ``clara-lite
data convert --dataset``) and ``link`` (fetched like ``clara-lite data fetch``, then trained on,
converted or built from according to what it holds), and hands every other source to it. The
training files land in ``<drive>/data/<run>-<name>`` and are remembered in run.json as usual.

>>> settings = prepare(drive, settings, "dataset", dataset="pubmedqa", limit=1000, long_answer=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = ("example", "jsonl", "raw", "dataset", "link")
DOWNLOADS = "downloads"  # <drive>/downloads/<run>: what a link fetched


def _on_drive(drive: Path, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(drive) / path


def convert_dataset(drive: Path, settings, dataset: str, *, split: str = "", limit: int = 0, fmt: str = "auto",
                    long_answer: bool = False) -> Path:
    """``dataset`` (a Drive folder or file, else a Hub id or short name) -> <drive>/data/<run>-<name>/."""
    from .convert import convert
    from .sources import detect_format, load_records
    from .split import write_stage_files

    local = _on_drive(drive, dataset)
    source = local if local.exists() else dataset
    records, description = load_records(source, split=split or None, limit=limit)
    fmt = fmt if fmt != "auto" else detect_format(records[0])
    options = {"answer": "long"} if long_answer and fmt == "pubmedqa" else {}
    name = re.sub(r"[^\w.-]+", "_", Path(str(dataset)).name or str(dataset)).strip("_") or "dataset"
    target = Path(drive) / "data" / f"{settings.run_name}-{name}"
    _, stats = write_stage_files(convert(records, fmt, **options), target, k=max(4, settings.top_k), heldout=0.1)
    print(f"{description}: {len(records)} records ({fmt}{', long answers' if options else ''}) -> "
          f"{stats['train_questions']} training and {stats['heldout_questions']} held-out questions over "
          f"{stats['documents']} documents")
    return target


def prepare(drive: Path, settings, source: str = "example", folder: str = "", *, dataset: str = "", split: str = "",
            limit: int = 0, long_answer: bool = False, link: str = ""):
    """The run's data from any source (see the module doc); returns the saved settings, or None when
    something is missing (what to set is printed)."""
    from .. import notebook as nb

    if source not in SOURCES:
        raise nb.SettingsError(f"DATA_SOURCE must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    if source == "dataset":
        if not dataset:
            print("Set DATASET to a Hugging Face dataset (a Hub id, or pubmedqa, medqa, musique, hotpotqa, nq, squad) "
                  "or a Drive folder or file of one; DATASET_LIMIT keeps the first N records.")
            return None
        target = convert_dataset(drive, settings, dataset, split=split, limit=limit, long_answer=long_answer)
        return nb.prepare_data(drive, settings, "jsonl", str(target))
    if source == "link":
        if not link:
            print("Set DATA_LINK to a Drive share link (a zip or folder of documents, a dataset file, or a folder "
                  "with stage1/2/3.jsonl) or an http(s) URL.")
            return None
        from .fetch import fetch

        fetched = fetch(link, Path(drive) / DOWNLOADS / settings.run_name)
        print(f"fetched {fetched.kind}: {fetched.path}")
        if fetched.kind == "stage files":
            folder = fetched.path if fetched.path.is_dir() else fetched.path.parent
            stage1 = next(folder.rglob("stage1.jsonl"))
            return nb.prepare_data(drive, settings, "jsonl", str(stage1.parent))
        if fetched.kind == "dataset":
            target = convert_dataset(drive, settings, str(fetched.path), split=split, limit=limit,
                                     long_answer=long_answer)
            return nb.prepare_data(drive, settings, "jsonl", str(target))
        return nb.prepare_data(drive, settings, "raw", str(fetched.path))
    return nb.prepare_data(drive, settings, source, folder)
