"""One orchestration of "the same questions, answered by each system": the CLI (``clara-lite eval --systems``), the
notebooks (``Workspace.compare`` / ``benchmark``) and the demo call :func:`run_comparison`; they only show the result.

The normal setting needs documents to retrieve from: ``pool`` when given, else every document of the questions'
rows, searched by BM25 (``pipeline.questions.pool_retriever``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..pipeline.questions import pool_retriever
from .compare import LOCAL_SYSTEMS, NORMAL, ORACLE, Comparison, compare
from .report import write_report


def run_comparison(model, rows, systems: Sequence[str] = LOCAL_SYSTEMS, *, setting: str = ORACLE,
                   top_k: int | None = None, pool: list[str] | None = None, report_dir: str | Path | None = None,
                   paper: dict | None = None, batch_size: int = 8, max_new_tokens: int = 32,
                   info: dict | None = None, endpoint=None) -> tuple[Comparison, dict[str, Path]]:
    """:func:`~.compare.compare` on ``rows`` (the pool retriever built for the normal setting), and its report in
    ``report_dir`` (none when None). Returns the comparison and the report's paths. ``endpoint``
    (:func:`.endpoint.open_endpoint`) answers as ``text-rag-endpoint``."""
    retriever = None
    if setting == NORMAL:
        retriever = pool_retriever(pool or list(dict.fromkeys(d for row in rows for d in row.docs)))
    result = compare(model, rows, systems, setting=setting, top_k=top_k, retriever=retriever, pool=pool,
                     batch_size=batch_size, max_new_tokens=max_new_tokens, info=info, endpoint=endpoint)
    paths = write_report(result, report_dir, paper) if report_dir is not None else {}
    return result, paths
