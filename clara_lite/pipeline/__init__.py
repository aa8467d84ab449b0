"""Raw documents and public QA datasets -> training JSONL for all three stages.

One module per step; each reads the previous step's file and writes its own:

- :mod:`.extract`: documents -> text per page with source, page, title, images (``raw.jsonl``)
- :mod:`.chunk`: pages -> passages of about ``doc_max_length`` base-model tokens (``chunks.jsonl``)
- :mod:`.generators`: an OpenAI-compatible endpoint over HTTP, or a local transformers model
- :mod:`.synthesize`: passages -> summary + QA pairs, resumable (``synth.jsonl``)
- :mod:`.negatives`: candidate documents per question (random, BM25, MiniLM embeddings)
- :mod:`.convert`: SQuAD, HotpotQA, PubMedQA, NQ and our synthesis -> a :class:`Corpus`
- :mod:`.split`: a corpus -> stage1/2/3 + held-out files, split by document
- :mod:`.build`: all of it in one call (``clara-lite data build``)

Importing this package is cheap: the document, tokenizer and model libraries load on first use.

>>> from clara_lite.pipeline import BuildConfig, build, make_generator
>>> report = build("docs/", "data/", make_generator("api"), BuildConfig(base="qwen2.5-1.5b"))  # doctest: +SKIP
"""

from .build import BuildConfig, build
from .chunk import ChunkConfig, chunk_pages, load_tokenizer
from .convert import FORMATS, convert, from_synthesis, load_records
from .extract import Extraction, extract_folder
from .generators import GeneratorError, LocalModel, OpenAICompatible, make_generator, make_vision
from .negatives import STRATEGIES, Embedder, candidates
from .records import Chunk, Corpus, Page, QAItem
from .split import split_units, stage_rows, write_stage_files
from .synthesize import SynthesisConfig, parse_qa, parse_summary, synthesize

__all__ = [
    "FORMATS", "STRATEGIES", "BuildConfig", "Chunk", "ChunkConfig", "Corpus", "Embedder", "Extraction",
    "GeneratorError", "LocalModel", "OpenAICompatible", "Page", "QAItem", "SynthesisConfig", "build", "candidates",
    "chunk_pages", "convert", "extract_folder", "from_synthesis", "load_records", "load_tokenizer", "make_generator",
    "make_vision", "parse_qa", "parse_summary", "split_units", "stage_rows", "synthesize", "write_stage_files",
]
