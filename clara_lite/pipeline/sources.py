"""Where QA records come from: a Hugging Face dataset (Hub name, saved folder, data folder) or a file.

Seed 001's route is a public dataset by name (PubMedQA, MedQA); others have the files on Drive.
Everything goes through the ``datasets`` library: a Hub name is streamed (NQ's train split is
tens of GB and only ``--limit`` records are needed), a folder written by ``save_to_disk`` is opened
with ``load_from_disk``, any other folder (JSON, JSONL, Parquet, CSV files, with split names in
their file names as on the Hub) with ``load_dataset``. A JSON file whose nested lists Arrow cannot
type (2WikiMultiHopQA's ``[title, [sentences]]``) is read as plain JSON instead. The format is
told from the first record's fields (:func:`detect_format`) unless given.

For example::

    records, total = load_records("pubmedqa", limit=500)
    corpus = convert(records, detect_format(records[0]), answer="long")
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..core.secrets import redact
from ..model.hub import hub_token
from .convert import load_records as read_file

log = logging.getLogger(__name__)

# short names -> (Hub id, config, default split); any other Hub id works as it is
KNOWN = {
    "pubmedqa": ("qiaojin/PubMedQA", "pqa_labeled", "train"),
    "medqa": ("GBaker/MedQA-USMLE-4-options", None, "train"),
    "musique": ("dgslibisey/MuSiQue", None, "train"),
    "hotpotqa": ("hotpotqa/hotpot_qa", "distractor", "train"),
    "nq": ("google-research-datasets/natural_questions", "default", "validation"),
    "squad": ("rajpurkar/squad", None, "train"),
}
FILE_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".arrow"}
_SAVED = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def detect_format(record: dict) -> str:
    """The converter for a record, from its fields; raises ``ValueError`` naming them when unknown."""
    keys = set(record)
    paragraphs = record.get("paragraphs")
    if isinstance(paragraphs, list) and paragraphs and isinstance(paragraphs[0], dict):
        if "paragraph_text" in paragraphs[0]:
            return "musique"
        if "qas" in paragraphs[0]:
            return "squad"
    if {"context", "supporting_facts"} <= keys:
        return "2wiki" if "evidences" in keys else "hotpotqa"
    context = record.get("context")
    if keys & {"final_decision", "long_answer", "LONG_ANSWER"} or isinstance(context, dict) and "contexts" in context:
        return "pubmedqa"
    if "options" in keys and keys & {"answer", "answer_idx"}:
        return "medqa"
    if keys & {"document_text", "positive_ctxs"} or {"document", "annotations"} <= keys:
        return "nq"
    if {"question", "context", "answers"} <= keys:
        return "squad"
    if {"instruction", "output"} <= keys:
        return "instruction"
    if "question" in keys and keys & {"docs", "content"} and keys & {"gold_answer", "answer", "answers"}:
        return "seed001"
    if {"doc", "qa"} <= keys:
        return "synthesis"
    raise ValueError(f"cannot tell the dataset format from its fields ({', '.join(sorted(keys))}); "
                     "give it with --format")


def _pick_split(dataset, split: str | None, where: str):
    """One split of a DatasetDict (``train`` unless told), or the dataset itself."""
    if not hasattr(dataset, "keys"):  # a single Dataset / IterableDataset
        return dataset
    names = list(dataset.keys())
    choice = split or ("train" if "train" in names else names[0])
    if choice not in names:
        raise ValueError(f"{where} has no split {choice!r}; it has {', '.join(names)}")
    log.info("%s: split %s", where, choice)
    return dataset[choice]


def _json_files(folder: Path, split: str | None) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".json", ".jsonl") and p.is_file()
                   and not p.name.startswith(".") and p.name not in _SAVED)
    if split:
        files = [p for p in files if split.lower() in p.name.lower()] or files
    return files


def _plain_json(paths: list[Path]) -> Iterator[dict]:

    for path in paths:
        yield from read_file(path)


def open_dataset(source: str | Path, *, split: str | None = None, config: str | None = None,
                 streaming: bool | None = None):
    """``(records, total or None, description)`` for a Hub name, a folder or a file (see the module doc)."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        if path.suffix.lower() in (".json", ".jsonl"):

            records = read_file(path)
            return records, len(records), f"file {path}"
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise ValueError(f"{path}: not a dataset file ({', '.join(sorted(FILE_SUFFIXES))})")
        import datasets

        builder = path.suffix.lower().lstrip(".")
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        return dataset, len(dataset), f"file {path}"
    if path.is_dir():
        import datasets

        if any((path / name).is_file() for name in _SAVED):
            dataset = _pick_split(datasets.load_from_disk(str(path)), split, str(path))
            return dataset, len(dataset), f"saved dataset {path}"
        problem = None
        try:
            dataset = _pick_split(datasets.load_dataset(str(path), config, streaming=bool(streaming)), split, str(path))
            if not streaming and len(dataset) == 1 and all(isinstance(v, dict) for v in dataset[0].values()):
                problem = "one record keyed by id"  # PubMedQA's ori_pqal.json: {pubid: record}
        except Exception as err:  # older datasets: Arrow cannot type [title, [sentences]] lists
            problem = f"{type(err).__name__}: {err}"
        files = _json_files(path, split) if problem else []
        if problem and not files:
            raise ValueError(f"{path}: the datasets library cannot read it ({problem})")
        if files:
            log.info("%s: read as plain JSON (datasets gave %s)", path, problem)
            return _plain_json(files), None, f"JSON files in {path}"
        return dataset, None if streaming else len(dataset), f"folder {path}"
    if str(source).startswith((".", "/", "~")) or str(source).endswith(tuple(FILE_SUFFIXES)):
        raise FileNotFoundError(f"dataset not found: {source}")
    import datasets

    name, known_config, known_split = KNOWN.get(str(source).lower(), (str(source), None, None))
    config, split = config or known_config, split or known_split or "train"
    streaming = True if streaming is None else streaming
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as err:  # a Hub error may echo the request, HF_TOKEN included: never shown as it is
        raise OSError(f"{name}: the Hugging Face Hub could not load it ({type(err).__name__}: "
                      f"{redact(str(err), hub_token())}). Check the name (or give a local file or folder) and "
                      "your token") from None
    total = None if streaming else len(dataset)
    return dataset, total, f"{name}{f' ({config})' if config else ''} [{split}] from the Hugging Face Hub"


def iterate(records: Iterable[dict], total: int | None = None, limit: int = 0, desc: str = "records",
            progress: bool = True) -> Iterator[dict]:
    """Records (at most ``limit``), with a ``tqdm.auto`` progress bar (a widget in Colab)."""
    if limit:
        records = itertools.islice(records, limit)
        total = min(total, limit) if total is not None else limit
    if not progress:
        yield from records
        return
    from tqdm.auto import tqdm

    yield from tqdm(records, total=total, desc=desc, unit=" records")


def load_records(source: str | Path, *, split: str | None = None, config: str | None = None, limit: int = 0,
                 streaming: bool | None = None, progress: bool = True) -> tuple[list[dict], str]:
    """``(records, description)``: up to ``limit`` records of ``source``, as plain dicts."""
    records, total, description = open_dataset(source, split=split, config=config, streaming=streaming)
    rows = [dict(r) for r in iterate(records, total, limit, desc=Path(str(source)).name or str(source),
                                     progress=progress)]
    if not rows:
        raise ValueError(f"{description}: no records")
    log.info("%s: %d records", description, len(rows))
    return rows, description
