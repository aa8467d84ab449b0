"""``clara-lite data extract|describe|chunk|synthesize|negatives|split|convert|fetch|build``: thin calls into the pipeline.

The generator's endpoint and key come only from the environment (``CLARA_LLM_BASE_URL``,
``CLARA_LLM_MODEL``, ``CLARA_LLM_API_KEY``): a key on the command line would end up in shell
history and process lists.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..core.config import ClaraConfig, add_flags, given
from ..model.stages import ORDER
from .build import BuildConfig, build, load_chunks
from .chunk import ChunkConfig, chunk_pages, load_tokenizer
from .convert import FORMATS, convert, from_synthesis, instruction_outputs
from .describe import VisionConfig, describe_pages
from .extract import DoclingOptions, extract_folder
from .fetch import fetch
from .generators import GeneratorError, LocalModel, make_generator, make_vision
from .images import ImageLimits
from .records import Page, read_records, read_rows, row_of, write_jsonl
from .sources import KNOWN, detect_format, load_records
from .split import stage_rows, write_stage_files
from .synthesize import SynthesisConfig, synthesize

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


def _docling_options(args):
    return DoclingOptions(images_scale=args.images_scale, do_ocr=not args.no_ocr,
                          do_table_structure=not args.no_tables, table_mode=args.table_mode,
                          timeout=args.docling_timeout)


def _extract(args) -> int:
    extraction = extract_folder(args.input, images_dir=args.images_dir, use_docling=args.docling,
                                docling_options=_docling_options(args))
    write_jsonl(args.out, (row_of(p) for p in extraction.pages))
    report = Path(args.out).with_suffix(".report.json")
    report.write_text(json.dumps(extraction.report(), indent=2) + "\n", encoding="utf-8")
    _print_extraction(extraction)
    print(f"-> {args.out} (report: {report})")
    return 0


def _model(args) -> ClaraConfig:
    """The model settings the passages are cut for (unset flags: the fields' defaults)."""
    return ClaraConfig(**given(args, ClaraConfig))


def _chunk_config(args):
    length = _model(args).doc_max_length
    overlap = ChunkConfig.default_overlap(length) if args.overlap is None else args.overlap
    return ChunkConfig(doc_max_length=length, overlap=overlap, min_tokens=args.min_tokens)


def _vision_config(args):
    return VisionConfig(prompt_file=args.image_prompt, max_tokens=args.max_tokens,
                        limits=ImageLimits(max_side=args.image_max_side, max_bytes=args.image_max_bytes))


def _vision(args):
    vision = make_vision(args.vision_model, base_url=args.base_url) if args.generator != "local" else None
    print(f"vision: {vision.name}" if vision else "no vision model (set CLARA_VLM_MODEL to describe images)")
    return vision


def _describe(args) -> int:
    vision = _vision(args)
    cache = args.cache or str(Path(args.out).with_name("images.jsonl"))

    def run() -> int:
        pages, report = describe_pages(read_records(args.input, Page), cache, vision, _vision_config(args))
        write_jsonl(args.out, (row_of(p) for p in pages))
        print(f"{report.format()}\n-> {args.out} (descriptions kept in {cache})")
        return 0

    return _resumable(run)


def _chunk(args) -> int:
    chunks = chunk_pages(read_records(args.input, Page), load_tokenizer(_model(args).base_model), _chunk_config(args))
    write_jsonl(args.out, (row_of(c) for c in chunks))
    sizes = sorted(c.n_tokens for c in chunks)
    median = sizes[len(sizes) // 2] if sizes else 0
    print(f"{len(chunks)} chunks (median {median} tokens of {_model(args).base_model}) -> {args.out}")
    return 0


def _generators(args):
    generator = make_generator(args.generator, args.model, base_url=args.base_url)
    print(f"generator: {'local ' if isinstance(generator, LocalModel) else ''}{generator.name}")
    return generator


def _synthesis_config(args):
    return SynthesisConfig(n_questions=args.questions, question_language=args.question_language or None,
                           qa_format=args.qa_format, max_tokens=args.max_tokens,
                           summary_max_tokens=args.summary_max_tokens, summary=not args.no_summary,
                           summary_prompt=args.summary_prompt, qa_prompt=args.qa_prompt)


def _resumable(run) -> int:
    try:
        return run()
    except GeneratorError as err:
        log.error("%s\nThe chunks done so far are saved: rerun the same command to resume.", err)
        return 3


def _synthesize(args) -> int:
    chunks = load_chunks(args.input)[: args.limit or None]
    generator, config = _generators(args), _synthesis_config(args)

    def run() -> int:
        report = synthesize(chunks, args.out, generator, config)
        print(f"{report.format()} -> {args.out}")
        return 0

    return _resumable(run)


def _negatives(args) -> int:
    rows, _ = stage_rows(from_synthesis(read_rows(args.input), where=str(args.input)), k=args.k, strategy=args.strategy, heldout=0.0,
                         seed=args.seed)
    qa = rows[ORDER[-1]]  # questions with candidates, as the retrieving stage reads them
    write_jsonl(args.out, qa)
    print(f"{len(qa)} questions with {args.k} candidates ({args.strategy}) -> {args.out}")
    return 0


def _write(corpus, args) -> int:
    paths, stats = write_stage_files(corpus, args.out_dir, k=args.k, strategy=args.strategy, heldout=args.heldout,
                                     seed=args.seed)
    print(json.dumps(stats))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _split(args) -> int:
    ids = {c.id for c in load_chunks(args.chunks)} if args.chunks else None
    return _write(from_synthesis(read_rows(args.input), ids=ids, where=str(args.input)), args)


def _convert(args) -> int:
    if bool(args.input) == bool(args.dataset):
        raise SystemExit("give --input FILE or --dataset NAME_OR_FOLDER (one of them)")
    records, description = load_records(args.dataset or args.input, split=args.split, config=args.config,
                                        limit=args.limit, streaming=False if args.no_streaming else None)
    fmt = args.format if args.format != "auto" else detect_format(records[0])
    options = {"answer": "long"} if args.long_answer and fmt == "pubmedqa" else {}
    print(f"{description}: {len(records)} records, format {fmt}" + (" (long answers)" if options else ""))
    corpus = convert(records, fmt, where=description, **options)
    outputs = instruction_outputs(records) if fmt == "instruction" else []
    if outputs:  # chat-tuning pairs without a document: their outputs become documents to synthesize from
        folder = Path(args.out_dir) / "instruction_documents"
        folder.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(outputs, 1):
            (folder / f"row-{i:06d}.txt").write_text(text + "\n", encoding="utf-8")
        print(f"{len(outputs)} rows have no input (no document to answer from): their outputs are documents in "
              f"{folder}; questions about them come from synthesis:\n  clara-lite data build --input {folder} "
              f"--out {Path(args.out_dir) / 'from_outputs'}")
        if not corpus.items:
            return 0
    return _write(corpus, args)


def _fetch(args) -> int:
    fetched = fetch(args.url, args.out)
    print(fetched.format())
    return 0


def _build(args) -> int:
    generator, vision = _generators(args), _vision(args)
    config = BuildConfig(base=_model(args).base_model, chunk=_chunk_config(args), synthesis=_synthesis_config(args),
                         k=args.k, strategy=args.strategy, heldout=args.heldout, seed=args.seed,
                         use_docling=args.docling, docling=_docling_options(args), vision=_vision_config(args))

    def run() -> int:
        report = build(args.input, args.out, generator, config, vision=vision)
        extract = report["extract"]
        print(f"extractor: {extract['extractor']}")
        print(f"{extract['documents']} documents, {extract['pages']} pages, {extract['images']} images; "
              f"{report['chunks']['text']} chunks")
        for skipped in extract["skipped"]:
            print(f"skipped {skipped['source']}: {skipped['reason']}")
        images = report["images"]
        if images["without_vision"]:
            print(f"{images['without_vision']} images not described (no vision model)")
        elif images["images"]:
            print(f"images: {images['described']} of {images['images']} described, "
                  f"{len(images['converted'])} converted, {len(images['skipped'])} skipped")
        for converted in images["converted"]:
            print(f"converted image {converted['image']} ({converted['source']}): {'; '.join(converted['changes'])}")
        for skipped in images["skipped"]:
            print(f"skipped image {skipped['image']} ({skipped['source']}): {skipped['reason']}")
        print(json.dumps(report["split"]))
        for name, path in report["files"].items():
            print(f"{name}: {path}")
        return 0

    return _resumable(run)


# --------------------------------------------------------------------------- parsers


def _chunk_args(p) -> None:
    # the base model whose tokenizer measures passages, and the tokens per passage (the model's doc_max_length)
    add_flags(p, ClaraConfig, ("base_model", "doc_max_length"))
    p.add_argument("--overlap", type=int, default=None,
                   help="tokens repeated between consecutive passages (default: 1/8 of --doc-max-length, at most 32)")
    p.add_argument("--min-tokens", type=int, default=8, help="shorter passages are dropped")


def _endpoint_args(p) -> None:
    p.add_argument("--generator", choices=["auto", "api", "local"], default="auto",
                   help="api: OpenAI-compatible endpoint from CLARA_LLM_BASE_URL/MODEL/API_KEY (or OPENAI_BASE_URL / "
                        "OPENAI_API_KEY); local: transformers; auto: api when an endpoint is set")
    p.add_argument("--base-url", default=None, help="overrides CLARA_LLM_BASE_URL (the key stays in the environment)")
    p.add_argument("--max-tokens", type=int, default=512, help="per QA reply or image description")


def _vision_args(p) -> None:
    p.add_argument("--vision-model", default=None, help="describe images with this model (default CLARA_VLM_MODEL)")
    p.add_argument("--image-prompt", default=None, help="prompt file for image descriptions "
                                                        "(default: the shipped prompts/image.txt)")
    p.add_argument("--image-max-side", type=int, default=2048, help="images are shrunk to this many pixels a side")
    p.add_argument("--image-max-bytes", type=int, default=3_500_000, help="and re-encoded to at most this size")


def _generator_args(p) -> None:
    p.add_argument("--model", default=None, help="api: overrides CLARA_LLM_MODEL; local: registry name, Hub id or "
                                                 "folder (default smollm2-135m)")
    p.add_argument("--questions", type=int, default=3, help="QA pairs per chunk and language (3-5)")
    p.add_argument("--question-language", default="",
                   help="write questions and answers in this language; several, comma-separated (en,zh), "
                        "give every chunk pairs in each")
    p.add_argument("--qa-format", choices=["auto", "json", "lines"], default="auto")
    p.add_argument("--summary-max-tokens", type=int, default=256)
    p.add_argument("--no-summary", action="store_true", help="QA pairs only (no stage1 paraphrase rows)")
    p.add_argument("--summary-prompt", default=None, help="prompt file with {text} (default: prompts/summary.txt)")
    p.add_argument("--qa-prompt", default=None,
                   help="prompt file with {text} and optionally {n}, {language}, {format} (default: prompts/qa.txt)")


def _docling_args(p) -> None:
    p.add_argument("--docling", choices=["auto", "yes", "no"], default="auto", help="use IBM Docling if installed")
    p.add_argument("--images-scale", type=float, default=2.0, help="Docling: picture resolution (1.0 = 72 dpi)")
    p.add_argument("--no-ocr", action="store_true", help="Docling: no OCR (faster; scanned pages give no text)")
    p.add_argument("--no-tables", action="store_true", help="Docling: no table structure recognition")
    p.add_argument("--table-mode", choices=["accurate", "fast"], default="accurate", help="Docling: TableFormer mode")
    p.add_argument("--docling-timeout", type=float, default=None, help="Docling: seconds per document")


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
    _docling_args(p)
    p.set_defaults(func=_extract)

    p = data.add_parser("describe", help="raw.jsonl -> pages.jsonl with image descriptions in their documents")
    p.add_argument("--input", required=True, help="raw.jsonl from `data extract --images-dir`")
    p.add_argument("--out", required=True)
    p.add_argument("--cache", default=None, help="descriptions and skip reasons, resumable (default: images.jsonl "
                                                 "beside --out)")
    _endpoint_args(p)
    _vision_args(p)
    p.set_defaults(func=_describe)

    p = data.add_parser("chunk", help="raw.jsonl -> chunks.jsonl of about --doc-max-length tokens")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    _chunk_args(p)
    p.set_defaults(func=_chunk)

    p = data.add_parser("synthesize", help="chunks.jsonl -> synth.jsonl (summary + QA pairs per chunk; resumable)")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=0, help="only the first N chunks")
    _endpoint_args(p)
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


    p = data.add_parser("convert", help="a public QA dataset or another tool's file -> stage1/2/3 + heldout.jsonl")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                   help="auto: told from the fields; seed001: {question, docs, gold_answer} rows; instruction: "
                        "{instruction, input, output} rows; 2wiki: 2WikiMultiHopQA (HotpotQA's layout)")
    p.add_argument("--input", default=None, help="a JSON, JSONL, Parquet or CSV file")
    p.add_argument("--dataset", default=None,
                   help=f"a Hugging Face dataset: Hub id, a short name ({', '.join(KNOWN)}), a folder written by "
                        "save_to_disk or a folder of data files")
    p.add_argument("--split", default=None, help="dataset split (default: train, or the short name's)")
    p.add_argument("--config", default=None, help="dataset configuration (subset), e.g. pqa_labeled")
    p.add_argument("--no-streaming", action="store_true", help="download a Hub dataset whole instead of streaming it")
    p.add_argument("--long-answer", action="store_true",
                   help="PubMedQA: train on long_answer (seed 001) instead of yes/no/maybe")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--limit", type=int, default=0, help="only the first N records")
    _split_args(p)
    p.set_defaults(func=_convert)

    p = data.add_parser("fetch", help="download a Drive link or URL (a documents zip/folder or a dataset file)")
    p.add_argument("url", help="Drive file or folder link, Drive file id, or http(s) URL")
    p.add_argument("--out", required=True, help="folder to put it in (a zip is unpacked there)")
    p.set_defaults(func=_fetch)

    p = data.add_parser("build", help="documents -> stage1/2/3 + heldout.jsonl (extract, describe images, chunk, "
                                      "synthesize, split)")
    p.add_argument("--input", required=True, help="folder of documents")
    p.add_argument("--out", required=True, help="folder for the training files and intermediate files")
    _docling_args(p)
    _chunk_args(p)
    _endpoint_args(p)
    _generator_args(p)
    _vision_args(p)
    _split_args(p)
    p.set_defaults(func=_build)

