"""The index folder on disk: its parts (memory vectors of a document group, written whole, checked on
their own), chunks.jsonl, index.json, compressing the parts still missing, and merging shards.
:mod:`.index` is the API over it (build, load, search, ask, add, remove); the layout is described there.

Writers are exclusive and crash-safe. One at a time: every writer (build, add, remove, resume, merge)
holds ``index.lock`` (:mod:`clara_lite.train.lock`: a live holder is named and refused, a dead one's
lock taken over) and reads the index from disk under it, so two ``index add`` never both take the
same part number. Crash-safe: an update never rewrites a file in place. Its new chunks.jsonl, the
parts it shrinks and index.json are each written whole beside the old file (``<name>.new``);
``index.json.new`` complete is the commit point; then each replaces its old file (``os.replace``),
index.json last, the parts it adds are compressed, and the manifest is written last of all. The next
writer (:func:`roll_forward`, under the lock) finishes the renames of a committed update or drops the
staged files of one that was not, so a rerun resumes from any kill point. Each update adds 1 to
index.json's ``generation``: what a serving process watches (:meth:`.index.ClaraIndex.refresh`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import ClaraError
from ..core.hardware import detect_hardware
from ..core.layout import (
    INDEX_CHUNKS,
    INDEX_FILE,
    INDEX_LOCK,
    INDEX_MEMORY_DIR,
    INDEX_SHARDS_DIR,
    KIND_INDEX,
    MANIFEST,
    PENDING,
    fsync_path,
    index_part_file,
    verify,
    write_json,
    write_manifest,
)
from ..train.lock import hold  # the trainer's lock: a live holder refused and named, a dead one's taken over
from . import fingerprint as fp
from .documents import IndexChunk

FORMAT_VERSION = 1
GROUP_DOCS = 64  # documents per group: the unit of sharding
PART_ROWS = 256  # chunks per part file at most: the unit of resuming
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MEMORY, MINILM = "memory", "minilm"


class IndexFolderError(ClaraError, ValueError):
    """An index folder that is incomplete, of another build, or unreadable; the message says what to do."""
    code = "index_folder"


class IndexChanged(ClaraError, RuntimeError):
    """A part file no longer holds the rows this view of the index expects: another process changed it."""
    code = "index_changed"


def compress_batch_size(profile=None) -> int:
    """Chunks per encoder pass at build time, from the hardware plan: no gradients and no optimizer
    state, so a GPU takes 8x the training micro-batch; a CPU gains little from batching."""
    profile = profile or detect_hardware()
    if profile.device.kind == "cpu":
        return 8
    return min(128, 8 * profile.micro_batch_size)


# --------------------------------------------------------------------------- the parts


@dataclass
class Part:
    group: int
    sub: int
    rows: int
    ids: str  # sha256 of the rows' chunk ids: a part file holds exactly these rows

    @property
    def file(self) -> str:
        return index_part_file(self.group, self.sub)

    def row(self) -> dict:
        return {"group": self.group, "sub": self.sub, "rows": self.rows, "ids": self.ids}


def ids_sha(chunks: Sequence[IndexChunk]) -> str:
    return hashlib.sha256("\n".join(c.id for c in chunks).encode()).hexdigest()


def parts_of(groups: dict[int, list[IndexChunk]], part_rows: int) -> list[tuple[Part, list[IndexChunk]]]:
    out = []
    for group in sorted(groups):
        chunks = groups[group]
        for sub, start in enumerate(range(0, len(chunks), part_rows)):
            rows = chunks[start:start + part_rows]
            out.append((Part(group, sub, len(rows), ids_sha(rows)), rows))
    return out


def part_ok(folder: Path, part: Part, with_minilm: bool) -> bool:
    """The part file is complete and holds exactly the part's rows (a killed write fails to open)."""
    from safetensors import SafetensorError, safe_open

    path = folder / part.file
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            rows = f.get_slice(MEMORY).get_shape()[0] if MEMORY in keys else -1
    except (SafetensorError, OSError, ValueError):
        return False
    return meta.get("ids") == part.ids and rows == part.rows and (not with_minilm or MINILM in keys)


def write_part(folder: Path, part: Part, tensors: dict, suffix: str = "") -> None:
    from safetensors.torch import save_file

    path = folder / (part.file + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ids": part.ids})
    fsync_path(path)


def shard_range(shard: tuple[int, int], n_groups: int) -> tuple[int, int]:
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be i/N with 0 <= i < N, got {i}/{n}")
    return i * n_groups // n, (i + 1) * n_groups // n


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> (1, 4)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/2), got {text!r}") from None
    shard_range((i, n), 1)
    return i, n


def read_meta(path: Path) -> dict:
    file = path / INDEX_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not an index (no {INDEX_FILE}): build one with clara-lite index build")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise IndexFolderError(f"{file}: not valid JSON ({err}): rebuild the index") from None
    if not isinstance(meta, dict):
        raise IndexFolderError(f"{file}: a JSON {type(meta).__name__}, not an index's object: rebuild the index")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFolderError(f"{file}: index format {version!r}, this clara_lite reads {FORMAT_VERSION}"
                          + ("; upgrade clara_lite" if isinstance(version, int) and version > FORMAT_VERSION else ""))
    return meta


def sizes_problem(path: Path) -> str | None:
    """:func:`~clara_lite.core.layout.verify` without hashing: every listed file present at its size."""
    return verify(path, KIND_INDEX, hashes=False, interrupted="the build or an update was interrupted")


def read_chunks(path: Path) -> list[IndexChunk]:
    out = []
    with open(path / INDEX_CHUNKS, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                out.append(IndexChunk.from_row(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as err:
                raise IndexFolderError(f"{path / INDEX_CHUNKS}:{lineno}: not a chunk row ({err})") from None
    return out


def write_chunks(path: Path, chunks: Sequence[IndexChunk], name: str = INDEX_CHUNKS) -> None:
    with open(path / name, "w", encoding="utf-8") as f:
        for c in chunks:
            f.write(json.dumps(c.row(), ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _same_build(old: dict, new: dict) -> list[str]:
    """What differs between an interrupted build's index.json and this one's (fingerprints compared
    with :mod:`.fingerprint`'s tolerance)."""
    diff = [k for k in sorted(set(old) | set(new)) if k != "fingerprint" and old.get(k) != new.get(k)]
    return diff + fp.differences(old["fingerprint"], new["fingerprint"]) if "fingerprint" in old else diff


def prepare_folder(path: Path, meta: dict, chunks: list[IndexChunk]) -> None:
    """Write chunks.jsonl and index.json (:func:`commit`), or check that the folder holds this very build."""
    path.mkdir(parents=True, exist_ok=True)
    file = path / INDEX_FILE
    if file.is_file():
        try:
            old = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict):
            diff = _same_build({"generation": 0, **old}, meta)
            if diff:
                raise IndexFolderError(f"{path} holds another index ({', '.join(map(str, diff[:4]))} differ): build into "
                                  "a new folder, or `clara-lite index add` to add documents to it")
            return  # index.json is only ever replaced whole, after chunks.jsonl
    commit(path, meta, chunks)


# --------------------------------------------------------------------------- one writer, crash-safe


INDEX_WRITER = {"writer": "index writer", "doing": "running `clara-lite index`",
                "harm": "two writers on one index lose each other's documents",
                "instead": "run the command again once it has finished"}


@contextlib.contextmanager
def writing(path: Path, what: str):
    """Hold the index folder's ``index.lock`` for the block, an interrupted update finished or undone first."""
    with hold(path / INDEX_LOCK, stage=what, **INDEX_WRITER):
        roll_forward(path)
        yield


def commit(path: Path, meta: dict, chunks: Sequence[IndexChunk], staged: Sequence[tuple[Part, dict]] = ()) -> None:
    """Replace chunks.jsonl, index.json and the part files of ``staged`` by new content (see the module doc).

    Call it holding :func:`writing`. The manifest goes first (the folder is incomplete until the writer
    writes a new one); a kill before ``index.json.new`` is whole leaves the old index as it was.
    """
    (path / MANIFEST).unlink(missing_ok=True)
    for part, tensors in staged:
        write_part(path, part, tensors, suffix=PENDING)
    write_chunks(path, chunks, name=INDEX_CHUNKS + PENDING)
    tmp = path / f"{INDEX_FILE}{PENDING}.tmp"
    write_json(tmp, meta)
    os.replace(tmp, path / (INDEX_FILE + PENDING))  # the commit point
    fsync_path(path)
    roll_forward(path)


def _staged(path: Path) -> list[Path]:
    files = [path / (INDEX_CHUNKS + PENDING)]
    if (path / INDEX_MEMORY_DIR).is_dir():
        files += sorted((path / INDEX_MEMORY_DIR).glob("*" + PENDING))
    return [f for f in files if f.is_file()]


def roll_forward(path: Path) -> None:
    """Finish an update interrupted after its commit point (``index.json.new`` whole): every staged file
    replaces its old one, index.json last; or drop the staged files of one interrupted before it. Then
    remove the part files index.json does not list (a shrunk or removed group's). Idempotent."""
    if not path.is_dir():
        return
    (path / f"{INDEX_FILE}{PENDING}.tmp").unlink(missing_ok=True)
    pending = path / (INDEX_FILE + PENDING)
    if pending.is_file():
        for f in _staged(path):
            os.replace(f, f.with_name(f.name[:-len(PENDING)]))
        os.replace(pending, path / INDEX_FILE)
        fsync_path(path)
    else:
        for f in _staged(path):
            f.unlink()
    memory = path / INDEX_MEMORY_DIR
    if (path / INDEX_FILE).is_file() and memory.is_dir():
        wanted = {Part(**p).file for p in read_meta(path)["parts"]}
        for f in sorted(memory.glob("*.safetensors")):
            if f"{INDEX_MEMORY_DIR}/{f.name}" not in wanted:
                f.unlink()


def finish(path: Path) -> None:
    """The manifest, written last (the lock file is not part of the index)."""
    write_manifest(path, KIND_INDEX, skip=(INDEX_LOCK,))


def materialize(path: Path, model, parts, settings: dict, *, batch_size: int | None, progress: bool) -> None:
    """Compress every part whose file is missing or incomplete, in bounded memory, with a bar."""
    from tqdm.auto import tqdm

    with_minilm = MINILM in settings["keys"]
    todo = [(p, rows) for p, rows in parts if not part_ok(path, p, with_minilm)]
    if not todo:
        return
    size = batch_size or compress_batch_size()
    dtype = DTYPES[settings["dtype"]]
    embedder = None
    if with_minilm:
        from ..pipeline.negatives import Embedder

        embedder = Embedder(device=str(model.device))
    done = sum(p.rows for p, _ in parts) - sum(p.rows for p, _ in todo)
    bar = tqdm(total=sum(p.rows for p, _ in parts), initial=done, unit="chunk", desc="compressing",
               disable=not progress)
    for part, rows in todo:
        order = sorted(range(len(rows)), key=lambda i: (rows[i].n_tokens, i))  # similar lengths: less padding
        memory = [None] * len(rows)
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            mem, _ = model.compress_documents([rows[i].text for i in batch], batch_size=len(batch))
            for i, m in zip(batch, mem.to("cpu", dtype), strict=True):
                memory[i] = m
            bar.update(len(batch))
        tensors = {MEMORY: torch.stack(memory)}
        if embedder is not None:
            tensors[MINILM] = embedder.encode([c.text for c in rows]).float().cpu()
        write_part(path, part, tensors)
    bar.close()


# --------------------------------------------------------------------------- shards


def merge_shards(out, shards: Sequence[str | Path] | None = None) -> Path:
    """Join shard indexes (default: every folder under ``out``/shards) into one index at ``out``: the
    same files one process would have written. The part files are copied, nothing is recompressed;
    shards inside ``out`` are removed once copied (the index's manifest lists only its own files)."""
    out = Path(out)
    shard_dirs = [Path(s) for s in shards] if shards else sorted((out / INDEX_SHARDS_DIR).glob("shard-*"))
    remove_shards = all(out.resolve() in d.resolve().parents for d in shard_dirs)
    if not shard_dirs:
        raise FileNotFoundError(f"no shards to merge under {out / INDEX_SHARDS_DIR}")
    metas = []
    for d in shard_dirs:
        meta = read_meta(d)
        problem = sizes_problem(d)
        if problem:
            raise IndexFolderError(f"shard {d} is not complete: {problem}")
        if not meta.get("shard"):
            raise IndexFolderError(f"{d} is not a shard (built without --shard)")
        metas.append((meta, d))
    metas.sort(key=lambda m: m[0]["shard"]["index"])
    count = metas[0][0]["shard"]["count"]
    if [m["shard"]["index"] for m, _ in metas] != list(range(count)) or any(m["shard"]["count"] != count
                                                                             for m, _ in metas):
        have = [f"{m['shard']['index']}/{m['shard']['count']}" for m, _ in metas]
        raise IndexFolderError(f"shards {have} do not make up 0..{count - 1} of {count} exactly once")
    first = metas[0][0]
    for meta, d in metas[1:]:
        if meta["settings"] != first["settings"]:
            raise IndexFolderError(f"{d} was built with other settings than {metas[0][1]}")
        fp.check(meta["fingerprint"], first["fingerprint"], str(d))
    out.mkdir(parents=True, exist_ok=True)
    with writing(out, "merge"):
        (out / MANIFEST).unlink(missing_ok=True)
        chunks, parts = [], []
        for meta, d in metas:
            chunks += read_chunks(d)
            for p in meta["parts"]:
                part = Part(**p)
                target = out / part.file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(d / part.file, target)
                fsync_path(target)
                parts.append(p)
        merged = {"format_version": FORMAT_VERSION, "fingerprint": first["fingerprint"],
                  "settings": first["settings"], "parts": parts, "n_chunks": len(chunks),
                  "sources": {"documents": sum(m["sources"]["documents"] for m, _ in metas),
                              "skipped": [s for m, _ in metas for s in m["sources"]["skipped"]]},
                  "next_group": max(m["next_group"] for m, _ in metas), "shard": None, "generation": 0,
                  "model": first.get("model")}
        commit(out, merged, chunks)
        if remove_shards:
            for _, d in metas:
                shutil.rmtree(d)
            if (out / INDEX_SHARDS_DIR).is_dir() and not any((out / INDEX_SHARDS_DIR).iterdir()):
                (out / INDEX_SHARDS_DIR).rmdir()
        finish(out)
    return out
