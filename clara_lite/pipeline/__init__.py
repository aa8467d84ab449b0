"""Raw documents and public QA datasets -> training JSONL for all three stages.

One module per step; each reads the previous step's file and writes its own:

- :mod:`.fetch`: a Drive link or URL -> documents, a dataset file or stage files in a folder
- :mod:`.extract`: documents -> text per page with source, page, title, images (``raw.jsonl``)
- :mod:`.images`: Pillow checks and converts images for a vision endpoint, or skips them with the reason
- :mod:`.describe`: image descriptions in place of their ``[IMAGE_REF]``, resumable (``pages.jsonl``)
- :mod:`.chunk`: pages -> passages of about ``doc_max_length`` base-model tokens (``chunks.jsonl``)
- :mod:`.generators`: an OpenAI-compatible endpoint over HTTP, or a local transformers model
- :mod:`.prompts`: the prompt files (shipped defaults, or yours)
- :mod:`.synthesize`: passages -> summary + QA pairs in one or more languages, resumable (``synth.jsonl``)
- :mod:`.negatives`: candidate documents per question (random, BM25, MiniLM embeddings)
- :mod:`.sources`: QA records from a Hugging Face dataset (Hub name, folder) or a file
- :mod:`.convert`: SQuAD, HotpotQA, 2Wiki, MuSiQue, PubMedQA, MedQA, NQ, seed 001 and instruction
  files, and our synthesis -> a :class:`Corpus`
- :mod:`.split`: a corpus -> stage1/2/3 + held-out files, split by document
- :mod:`.build`: all of it in one call (``clara-lite data build``)

Importing this package is cheap: the document, tokenizer and model libraries load on first use.

For example::

    from clara_lite.pipeline import BuildConfig, build, make_generator
    report = build("docs/", "data/", make_generator("api"), BuildConfig(base="qwen2.5-1.5b"))
"""

from .build import BuildConfig, build
from .chunk import ChunkConfig, chunk_pages, load_tokenizer
from .convert import FORMATS, convert, from_synthesis, load_records
from .describe import ImageReport, VisionConfig, describe_pages
from .extract import DoclingOptions, Extraction, extract_folder
from .fetch import Fetched, fetch
from .generators import GeneratorError, LocalModel, OpenAICompatible, make_generator, make_vision
from .images import ImageLimits, ImageSkipped, prepare_image
from .negatives import STRATEGIES, Embedder, candidates
from .records import IMAGE_REF, Chunk, Corpus, Page, QAItem
from .sources import detect_format
from .split import split_units, stage_rows, write_stage_files
from .synthesize import SynthesisConfig, parse_qa, parse_summary, synthesize

__all__ = [
    "FORMATS", "IMAGE_REF", "STRATEGIES", "BuildConfig", "Chunk", "ChunkConfig", "Corpus", "DoclingOptions",
    "Embedder", "Extraction", "Fetched", "GeneratorError", "ImageLimits", "ImageReport", "ImageSkipped", "LocalModel",
    "OpenAICompatible", "Page", "QAItem", "SynthesisConfig", "VisionConfig", "build", "candidates", "chunk_pages",
    "convert", "describe_pages", "detect_format", "extract_folder", "fetch", "from_synthesis", "load_records",
    "load_tokenizer", "make_generator", "make_vision", "parse_qa", "parse_summary", "prepare_image", "split_units",
    "stage_rows", "synthesize", "write_stage_files",
]
