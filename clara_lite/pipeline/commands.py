"""``clara-lite data extract|chunk|synthesize|negatives|split|convert|build``: thin calls into the pipeline.

The generator's endpoint and key come only from the environment (``CLARA_LLM_BASE_URL``,
``CLARA_LLM_MODEL``, ``CLARA_LLM_API_KEY``): a key on the command line would end up in shell
history and process lists.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("clara_lite")


def _print_extraction(extraction) -> None:
    print(f"extractor: {extraction.extractor}")
    print(f"{extraction.n_documents} documents, {len(extraction.pages)} pages, {extraction.n_images} images")
    if extraction.skipped:
        print(f"skipped {len(extraction.skipped)} files:")
        for skipped in extraction.skipped:
            print(f"  {skipped.source}: {skipped.reason}")
    if extraction.ignored:
        print(f"ignored {len(extraction.ignored)} files of other types: {', '.join(extraction.ignored[:5])}"
              + (" ..." if len(extraction.ignored) > 5 else ""))


def _extract(args) -> int:
    from .extract import extract_folder
    from .records import row_of, write_jsonl

    extraction = extract_folder(args.input, images_dir=args.images_dir, use_docling=args.docling)
    write_jsonl(args.out, (row_of(p) for p in extraction.pages))
    report = Path(args.out).with_suffix(".report.json")
    report.write_text(json.dumps(extraction.report(), indent=2) + "\n", encoding="utf-8")
    _print_extraction(extraction)
    print(f"-> {args.out} (report: {report})")
    return 0


def _chunk_config(args):
    from .chunk import ChunkConfig

    overlap = ChunkConfig.default_overlap(args.doc_max_length) if args.overlap is None else args.overlap
    return ChunkConfig(doc_max_length=args.doc_max_length, overlap=overlap, min_tokens=args.min_tokens)


def _chunk(args) -> int:
    from .chunk import chunk_pages, load_tokenizer
    from .records import Page, read_records, row_of, write_jsonl

    chunks = chunk_pages(read_records(args.input, Page), load_tokenizer(args.base), _chunk_config(args))
    write_jsonl(args.out, (row_of(c) for c in chunks))
    sizes = sorted(c.n_tokens for c in chunks if c.kind == "text")
    median = sizes[len(sizes) // 2] if sizes else 0
    print(f"{len(chunks)} chunks ({len(sizes)} text, median {median} tokens of {args.base}) -> {args.out}")
    return 0


def _generators(args):
    from .generators import LocalModel, make_generator, make_vision

    generator = make_generator(args.generator, args.model, base_url=args.base_url)
    vision = make_vision(args.vision_model, base_url=args.base_url) if args.generator != "local" else None
    print(f"generator: {'local ' if isinstance(generator, LocalModel) else ''}{generator.name}"
          + (f"; vision: {vision.name}" if vision else "; no vision model (images are skipped)"))
    return generator, vision


def _synthesis_config(args):
    from .synthesize import SynthesisConfig

    return SynthesisConfig(n_questions=args.questions, question_language=args.question_language or None,
                           qa_format=args.qa_format, max_tokens=args.max_tokens,
                           summary_max_tokens=args.summary_max_tokens, summary=not args.no_summary)


def _resumable(run) -> int:
    from .generators import GeneratorError

    try:
        return run()
    except GeneratorError as err:
        log.error("%s\nThe chunks done so far are saved: rerun the same command to resume.", err)
        return 3


def _synthesize(args) -> int:
    from .build import load_chunks
    from .synthesize import synthesize

    chunks = load_chunks(args.input)[: args.limit or None]
    generator, vision = _generators(args)

    def run() -> int:
        report = synthesize(chunks, args.out, generator, _synthesis_config(args), vision=vision)
        print(f"{report.format()} -> {args.out}")
        return 0

    return _resumable(run)


def _negatives(args) -> int:
    from .convert import from_synthesis
    from .records import read_rows, write_jsonl
    from .split import stage_rows

    rows, _ = stage_rows(from_synthesis(read_rows(args.input)), k=args.k, strategy=args.strategy, heldout=0.0,
                         seed=args.seed)
    write_jsonl(args.out, rows["stage2"])
    print(f"{len(rows['stage2'])} questions with {args.k} candidates ({args.strategy}) -> {args.out}")
    return 0


def _write(corpus, args) -> int:
    from .split import write_stage_files

    paths, stats = write_stage_files(corpus, args.out_dir, k=args.k, strategy=args.strategy, heldout=args.heldout,
                                     seed=args.seed)
    print(json.dumps(stats))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _split(args) -> int:
    from .build import load_chunks
    from .convert import from_synthesis
    from .records import read_rows

    ids = {c.id for c in load_chunks(args.chunks)} if args.chunks else None
    return _write(from_synthesis(read_rows(args.input), ids=ids), args)


def _convert(args) -> int:
    from .convert import convert, load_records

    return _write(convert(load_records(args.input, args.limit), args.format), args)


def _build(args) -> int:
    from .build import BuildConfig, build

    generator, vision = _generators(args)
    config = BuildConfig(base=args.base, chunk=_chunk_config(args), synthesis=_synthesis_config(args),
                         k=args.k, strategy=args.strategy, heldout=args.heldout, seed=args.seed,
                         use_docling=args.docling)

    def run() -> int:
        report = build(args.input, args.out, generator, config, vision=vision)
        extract = report["extract"]
        print(f"extractor: {extract['extractor']}")
        print(f"{extract['documents']} documents, {extract['pages']} pages, {extract['images']} images; "
              f"{report['chunks']['text']} text chunks")
        for skipped in extract["skipped"]:
            print(f"skipped {skipped['source']}: {skipped['reason']}")
        print(json.dumps(report["split"]))
        for name, path in report["files"].items():
            print(f"{name}: {path}")
        return 0

    return _resumable(run)


# --------------------------------------------------------------------------- parsers


def _chunk_args(p) -> None:
    p.add_argument("--base", default="smollm2-135m", help="base model whose tokenizer measures passages")
    p.add_argument("--doc-max-length", type=int, default=256, help="tokens per passage")
    p.add_argument("--overlap", type=int, default=None,
                   help="tokens repeated between consecutive passages (default: 1/8 of --doc-max-length, at most 32)")
    p.add_argument("--min-tokens", type=int, default=8, help="shorter passages are dropped")


def _generator_args(p) -> None:
    p.add_argument("--generator", choices=["auto", "api", "local"], default="auto",
                   help="api: OpenAI-compatible endpoint from CLARA_LLM_BASE_URL/MODEL/API_KEY; local: transformers; "
                        "auto: api when CLARA_LLM_BASE_URL is set")
    p.add_argument("--model", default=None, help="api: overrides CLARA_LLM_MODEL; local: registry name, Hub id or "
                                                 "folder (default smollm2-135m)")
    p.add_argument("--base-url", default=None, help="overrides CLARA_LLM_BASE_URL (the key stays in the environment)")
    p.add_argument("--vision-model", default=None, help="describe images with this model (default CLARA_VLM_MODEL)")
    p.add_argument("--questions", type=int, default=3, help="QA pairs per chunk (3-5)")
    p.add_argument("--question-language", default="", help="cross-lingual: write questions and answers in this language")
    p.add_argument("--qa-format", choices=["auto", "json", "lines"], default="auto")
    p.add_argument("--max-tokens", type=int, default=512, help="per QA reply")
    p.add_argument("--summary-max-tokens", type=int, default=256)
    p.add_argument("--no-summary", action="store_true", help="QA pairs only (no stage1 paraphrase rows)")


def _split_args(p) -> None:
    p.add_argument("--k", type=int, default=4, help="candidate documents per question (>= training top_k)")
    p.add_argument("--strategy", choices=["random", "bm25", "embedding", "mixed"], default="bm25",
                   help="how negatives are chosen")
    p.add_argument("--heldout", type=float, default=0.1, help="share of documents held out (heldout.jsonl)")
    p.add_argument("--seed", type=int, default=0)


def add_data_commands(data: argparse._SubParsersAction) -> None:
    """Add the pipeline subcommands to ``clara-lite data``."""
    p = data.add_parser("extract", help="documents (PDF, DOCX, PPTX, HTML, Markdown, TXT) -> raw.jsonl")
    p.add_argument("--input", required=True, help="folder of documents (searched recursively)")
    p.add_argument("--out", required=True, help="raw.jsonl to write (a .report.json lands beside it)")
    p.add_argument("--images-dir", default=None, help="save embedded images here (for a vision model)")
    p.add_argument("--docling", choices=["auto", "yes", "no"], default="auto", help="use IBM Docling if installed")
    p.set_defaults(func=_extract)

    p = data.add_parser("chunk", help="raw.jsonl -> chunks.jsonl of about --doc-max-length tokens")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    _chunk_args(p)
    p.set_defaults(func=_chunk)

    p = data.add_parser("synthesize", help="chunks.jsonl -> synth.jsonl (summary + QA pairs per chunk; resumable)")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=0, help="only the first N chunks")
    _generator_args(p)
    p.set_defaults(func=_synthesize)

    p = data.add_parser("negatives", help="synth.jsonl -> stage2/3 rows (question + k candidates, pos_index)")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    _split_args(p)
    p.set_defaults(func=_negatives)

    p = data.add_parser("split", help="synth.jsonl -> stage1/2/3 + heldout.jsonl, split by document")
    p.add_argument("--input", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--chunks", default=None, help="chunks.jsonl: use only synth rows of these chunks")
    _split_args(p)
    p.set_defaults(func=_split)

    p = data.add_parser("convert", help="a public QA dataset file -> stage1/2/3 + heldout.jsonl")
    p.add_argument("--format", required=True, choices=["squad", "hotpotqa", "pubmedqa", "nq"])
    p.add_argument("--input", required=True, help="JSON or JSONL as published (or saved from datasets)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--limit", type=int, default=0, help="only the first N records")
    _split_args(p)
    p.set_defaults(func=_convert)

    p = data.add_parser("build", help="documents -> stage1/2/3 + heldout.jsonl (extract, chunk, synthesize, split)")
    p.add_argument("--input", required=True, help="folder of documents")
    p.add_argument("--out", required=True, help="folder for the training files and intermediate files")
    p.add_argument("--docling", choices=["auto", "yes", "no"], default="auto")
    _chunk_args(p)
    _generator_args(p)
    _split_args(p)
    p.set_defaults(func=_build)

