"""``clara-lite index build|add|remove|info|merge``, ``ask --index``, ``chat`` and ``serve``: thin calls into
:mod:`.index` and :mod:`.server`.

Under ``torchrun --nproc_per_node N`` (or ``accelerate launch``), ``index build`` without ``--shard``
builds shard RANK/WORLD_SIZE in each process, and process 0 merges the shards when all are done.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from ..core.hardware import SERVE_BATCH, SERVE_BATCH_GPU, detect_hardware
from ..core.layout import INDEX_FILE, KIND_INDEX, index_shard_dir, verify
from ..model.modeling import ClaraModel
from .access import API_KEY_ENV, read_api_key, require_key
from .index import ClaraIndex
from .index_folder import DTYPES, GROUP_DOCS, PART_ROWS, merge_shards, parse_shard, read_meta
from .openai_api import MODEL_NAME
from .retrievers import INDEX_TYPES, RETRIEVERS
from .server import LOOPBACK, MAX_STREAMS, serve
from .serving import BACKENDS

log = logging.getLogger("clara_lite")

BASE_PATH_HELP = "local copy of the base model (offline machines)"


def load_model(path: str, base_path: str | None = None) -> ClaraModel:
    """A saved model on the GPU when there is one (in the plan's dtype), else float32 on the CPU."""
    kwargs = {"base_path": base_path} if base_path else {}
    profile = detect_hardware()
    if profile.device.kind == "cuda":
        kwargs.update(device_map=profile.device.torch_device, dtype=profile.dtype)
    return ClaraModel.from_pretrained(path, **kwargs)


def model_source(path: str) -> str:
    """What ``index build`` records of ``--model``: an existing local path made absolute, else the Hub id."""
    return str(Path(path).resolve()) if os.path.exists(path) else path


def index_model(index_path: str, given: str | None) -> str:
    """``--model``, else the model the index recorded when it was built (``index.json``'s ``"model"``)."""
    if given:
        return given
    recorded = read_meta(Path(index_path)).get("model")
    if not recorded:
        raise ValueError(f"{index_path} does not record the model that built it (built before clara_lite "
                         "recorded it, or from Python without model_source): pass --model")
    log.info("model %s (recorded by the index)", recorded)
    return recorded


def open_index(args) -> ClaraIndex:
    model = load_model(index_model(args.index, args.model), args.base_path)
    return ClaraIndex.load(args.index, model, retriever=args.retriever, index_type=args.index_type,
                           merge=False if args.no_merge else None, backend=args.serving)


def _keys(value: str):
    return () if value == "none" else value


def _distributed() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _build(args) -> int:
    model = load_model(args.model, args.base_path)
    rank, world = _distributed()
    shard = parse_shard(args.shard) if args.shard else ((rank, world) if world > 1 else None)
    out = index_shard_dir(args.out, *shard) if shard else args.out
    options = dict(dtype=args.dtype, keys=_keys(args.keys), overlap=args.overlap, batch_size=args.batch_size,
                   shard=shard, group_docs=args.group_docs, part_rows=args.part_rows, use_docling=args.docling,
                   progress=not args.no_progress)
    index = ClaraIndex.build(out, model, args.input, model_source=model_source(args.model), **options)
    print(f"{out}: {len(index.chunks)} chunks")
    if world > 1 and not args.shard:  # torchrun: wait for every shard, then process 0 joins them
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        if rank == 0:
            merge_shards(args.out)
            print(f"{args.out}: merged {world} shards")
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _add(args) -> int:
    index = ClaraIndex.resume(args.index, load_model(args.model, args.base_path))  # finishes an interrupted add
    result = index.add(args.input, replace=args.replace, batch_size=args.batch_size, use_docling=args.docling,
                       progress=not args.no_progress)
    print(json.dumps(result | {"chunks": len(index.chunks)}, indent=2))
    return 0


def _remove(args) -> int:
    index = ClaraIndex.resume(args.index, load_model(args.model, args.base_path))
    print(f"removed {index.remove(args.sources)} chunks; {len(index.chunks)} left")
    return 0


def _info(args) -> int:
    if args.model:
        info = ClaraIndex.load(args.index, load_model(args.model, args.base_path)).info()
    else:
        with open(os.path.join(args.index, INDEX_FILE), encoding="utf-8") as f:
            meta = json.load(f)
        info = {"chunks": meta["n_chunks"], "parts": len(meta["parts"]), "settings": meta["settings"],
                "fingerprint": meta["fingerprint"]["id"], "base_model": meta["fingerprint"]["settings"]["base_model"],
                "model": meta.get("model"),
                "skipped": meta["sources"]["skipped"], "shard": meta["shard"]}
    if args.verify:
        problem = verify(args.index, KIND_INDEX, exact=True)
        info["verified"] = problem or "every file matches the manifest"
    print(json.dumps(info, indent=2))
    return 0 if not args.verify or info["verified"].startswith("every") else 1


def _merge(args) -> int:
    out = merge_shards(args.out, args.shards or None)
    print(f"{out}: merged")
    return 0


def _print_answer(answer, show: int = 80) -> None:
    print(f"answer: {answer.text}")
    print("sources:")
    for rank, hit in enumerate(answer.hits, start=1):
        c = hit.chunk
        where = c.source + (f" p.{c.page}" if c.page is not None else "") + f" [{c.start}:{c.end}]"
        print(f"  #{rank} {hit.score:.3f} {where}: {c.text[:show]!r}")


def ask_index(args, question: str) -> int:
    """``clara-lite ask --index IDX "question"``."""
    index = open_index(args)
    _print_answer(index.ask(question, args.top_k, max_new_tokens=args.max_new_tokens))
    return 0


def _chat(args) -> int:
    index = open_index(args)
    print(f"{len(index.chunks)} chunks, retriever {index.retriever().name}. Ask; an empty line or Ctrl-D ends.")
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("> "), ""):
        question = line.strip()
        if not question:
            break
        _print_answer(index.ask(question, args.top_k, max_new_tokens=args.max_new_tokens))
    return 0


def _serve(args) -> int:
    api_key = read_api_key(args.api_key_file)
    require_key(args.host, api_key)  # before the model loads: an open door is refused at once
    if args.ui and importlib.util.find_spec("gradio") is None:
        raise SystemExit("serve --ui needs Gradio: pip install 'clara-lite[ui]' (or pip install gradio)")
    index = open_index(args)
    serve(index, host=args.host, port=args.port, default_k=args.top_k, max_new_tokens=args.max_new_tokens,
          model_name=args.model_name, api_key=api_key, max_streams=args.max_streams, max_batch=args.max_batch,
          ui=args.ui)
    return 0


def add_index_options(parser, *, model_option: bool = True) -> None:
    """--model and how to search and answer (shared by ask --index, chat and serve)."""
    if model_option:
        parser.add_argument("--model", default=None, help="the model the index was built with (zip, folder or Hub "
                            "id; default: the one the index recorded at build; another model is refused)")
    parser.add_argument("--base-path", default=None, help=BASE_PATH_HELP)
    parser.add_argument("--retriever", default="auto", choices=RETRIEVERS,
                        help="auto: the query reasoner (stage3), else MiniLM keys, else BM25")
    parser.add_argument("--index-type", default="flat", choices=INDEX_TYPES, help="FAISS search (flat = exact)")
    parser.add_argument("--no-merge", action="store_true", help="decode through the LoRA layers (no merged copy)")
    parser.add_argument("--serving", choices=BACKENDS, default=None,
                        help="how answers are decoded: auto (default, $CLARA_LITE_SERVING: llama.cpp on a CPU when "
                             "llama-cpp-python is installed, else PyTorch in the device's precision), torch, "
                             "torch-fp32 (PyTorch in fp32 on any device), llama.cpp")


def _build_options(p) -> None:
    p.add_argument("--dtype", default="float16", choices=sorted(DTYPES), help="memory vectors on disk")
    p.add_argument("--keys", default="auto", choices=["auto", "minilm", "none"],
                   help="MiniLM keys for retriever minilm/hybrid (auto: when the MiniLM package is installed)")
    p.add_argument("--overlap", type=int, default=None, help="tokens shared by consecutive chunks "
                   "(default: an eighth of doc_max_length, at most 32)")
    p.add_argument("--batch-size", type=int, default=None, help="chunks per encoder pass (default: the hardware plan)")
    p.add_argument("--group-docs", type=int, default=GROUP_DOCS, help="documents per group (the unit of sharding)")
    p.add_argument("--part-rows", type=int, default=PART_ROWS, help="chunks per part file (the unit of resuming)")
    p.add_argument("--docling", default="auto", choices=["auto", "yes", "no"], help="use IBM Docling if installed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_serve_commands(sub) -> None:
    """Add ``index``, ``chat`` and ``serve`` to the ``clara-lite`` subcommands."""
    index = sub.add_parser("index", help="a compressed document index: build once, answer from it")
    isub = index.add_subparsers(dest="index_command", required=True)

    b = isub.add_parser("build", help="compress documents into an index folder (reruns resume)")
    b.add_argument("--model", required=True, help="saved model (zip or folder)")
    b.add_argument("--input", required=True, help="a folder (PDF, DOCX, PPTX, HTML, MD, TXT) or a JSONL ({\"text\", \"source\"} lines)")
    b.add_argument("--out", required=True, help="the index folder")
    b.add_argument("--shard", default=None, help="i/N: build only the i-th of N document ranges into "
                   "OUT/shards/ (join with index merge); under torchrun each process takes its rank")
    b.add_argument("--base-path", default=None, help=BASE_PATH_HELP)
    _build_options(b)
    b.set_defaults(func=_build)

    a = isub.add_parser("add", help="add documents to an index (a source already there with other text: --replace)")
    a.add_argument("--model", required=True)
    a.add_argument("--index", required=True)
    a.add_argument("--input", required=True)
    a.add_argument("--replace", action="store_true", help="replace sources already in the index")
    a.add_argument("--base-path", default=None, help=BASE_PATH_HELP)
    a.add_argument("--batch-size", type=int, default=None)
    a.add_argument("--docling", default="auto", choices=["auto", "yes", "no"])
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=_add)

    r = isub.add_parser("remove", help="remove sources (their chunks) from an index")
    r.add_argument("--model", required=True)
    r.add_argument("--index", required=True)
    r.add_argument("sources", nargs="+", help="source names as `index info` and answers show them")
    r.add_argument("--base-path", default=None, help=BASE_PATH_HELP)
    r.set_defaults(func=_remove)

    i = isub.add_parser("info", help="what an index holds (with --model: checks it fits the model)")
    i.add_argument("--index", required=True)
    i.add_argument("--model", default=None)
    i.add_argument("--base-path", default=None, help=BASE_PATH_HELP)
    i.add_argument("--verify", action="store_true", help="check every file's sha256 against the manifest")
    i.set_defaults(func=_info)

    m = isub.add_parser("merge", help="join shard indexes into one (default: OUT/shards/*)")
    m.add_argument("--out", required=True)
    m.add_argument("shards", nargs="*", help="shard folders (default: every OUT/shards/shard-*)")
    m.set_defaults(func=_merge)

    c = sub.add_parser("chat", help="ask an index question after question (an empty line ends)")
    c.add_argument("--index", required=True)
    add_index_options(c)
    c.add_argument("--top-k", type=int, default=None, help="chunks per answer (default: the model's)")
    c.add_argument("--max-new-tokens", type=int, default=64)
    c.set_defaults(func=_chat)

    s = sub.add_parser("serve", help="an HTTP JSON API over an index: POST /search, POST /ask, GET /health, "
                       "and OpenAI's /v1/chat/completions (streaming too) and /v1/models; with --ui a chat page at /ui")
    s.add_argument("--index", required=True)
    add_index_options(s)
    s.add_argument("--host", default=LOOPBACK, help="address to listen on (default loopback; any other needs an "
                   f"API key: {API_KEY_ENV} or --api-key-file)")
    s.add_argument("--api-key-file", default=None, help=f"a file whose first line is the API key (else {API_KEY_ENV}); "
                   "clients send 'Authorization: Bearer KEY'")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--top-k", type=int, default=None, help="chunks per answer unless the request says")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--model-name", default=MODEL_NAME, help="the model id of the OpenAI-compatible routes")
    s.add_argument("--max-streams", type=int, default=MAX_STREAMS, help="streamed answers at once (more: 429)")
    s.add_argument("--ui", action="store_true", help="a chat page at /ui (Gradio: pip install 'clara-lite[ui]'; "
                   "with an API key the page asks for it)")
    s.add_argument("--max-batch", type=int, default=None, help="requests that arrive close together are "
                   f"decoded together, at most this many (default: the device's, logged at start: {SERVE_BATCH} on a "
                   "CPU, on a GPU " + ", ".join(f"{n} from {gb:g} GB" for gb, n in SERVE_BATCH_GPU) + "; 1: one at "
                   "a time)")
    s.set_defaults(func=_serve)
