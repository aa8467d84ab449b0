"""A :class:`~clara_lite.serve.compare.Comparison` as a Markdown table, a JSON file, a bar chart and the
answers side by side: what ``clara-lite eval --systems`` writes and a notebook shows inline.

For example::

    paths = write_report(result, "runs/my-run/compare")
    sorted(paths)
    # -> ['chart', 'json', 'markdown', 'predictions']
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.layout import COMPARE_CHART, COMPARE_JSON, COMPARE_MARKDOWN, COMPARE_PREDICTIONS, write_json
from .compare import RECOVERY_METRICS, TEXT_RAG_ENDPOINT, Comparison

CHART_METRICS = (("em", "EM"), ("f1", "F1"), ("cover_em", "cover-EM"))
RECOVERY_LABELS = dict(CHART_METRICS)


def _interval(values, signed: bool = False) -> str:
    x, lo, hi = values
    fmt = "{:+.3f}" if signed else "{:.2f}"
    if x is None:
        return "–"
    if lo is None:
        return fmt.format(x)
    return f"{fmt.format(x)} ({fmt.format(lo)}..{fmt.format(hi)})"


def recovery_lines(result: Comparison) -> list[str]:
    """``result.recovery`` (:func:`~clara_lite.serve.compare.recovery`) as a Markdown table; none without it."""
    found = result.recovery
    if not found:
        return []
    zeroed = "over_zeroed" in found[RECOVERY_METRICS[0]]
    head = ["metric", "share of text RAG's gain CLaRa recovers", "CLaRa - closed-book"]
    head += ["CLaRa - zeroed memory"] if zeroed else []
    lines = ["", "95% paired bootstrap intervals over the questions:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in RECOVERY_METRICS:
        row = found[key]
        cells = [RECOVERY_LABELS[key], _interval(row["share"]), _interval(row["over_closed_book"], True)]
        cells += [_interval(row["over_zeroed"], True)] if zeroed else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(result: Comparison, paper: dict[str, float] | None = None) -> str:
    """One row per system; ``paper`` (``{system: score in %}``, :mod:`clara_lite.serve.paper`) adds a
    column with the paper's figure for the same system, as a fraction like ours."""
    head = ["system", "EM", "F1", "cover-EM", f"Recall@{result.top_k}", "prompt tokens", "s / question"]
    if paper:
        head.append("paper")
    lines = [f"{result.count} questions, {result.setting} setting, top-{result.top_k}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in result.scores.items():
        cells = [name, _number(s["em"]), _number(s["f1"]), _number(s["cover_em"]), _number(s.get("recall_at_k")),
                 _number(s["prompt_tokens"], 0), f"{s['seconds_per_question']:.2f}"]
        if paper:
            cells.append(_number(paper[name] / 100 if name in paper else None))
        lines.append("| " + " | ".join(cells) + " |")
    if "endpoint" in result.info:  # what answered as text-rag-endpoint (the URL without credentials)
        lines += ["", f"{TEXT_RAG_ENDPOINT}: {result.info['endpoint']['model']} at {result.info['endpoint']['url']}"]
    return "\n".join(lines + recovery_lines(result))


def bar_chart(result: Comparison, png: str | Path) -> Path:
    """EM, F1 and cover-EM of each system as grouped bars (matplotlib's Figure API: no pyplot, so a
    notebook's backend is left as it is)."""
    from matplotlib.figure import Figure

    names = list(result.scores)
    fig = Figure(figsize=(1.6 + 1.5 * len(names), 4))
    ax = fig.subplots()
    width = 0.8 / len(CHART_METRICS)
    for j, (key, label) in enumerate(CHART_METRICS):
        xs = [i + (j - (len(CHART_METRICS) - 1) / 2) * width for i in range(len(names))]
        values = [result.scores[n][key] for n in names]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"{result.count} questions, {result.setting} setting, top-{result.top_k}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=100)
    return png


def write_report(result: Comparison, out_dir: str | Path, paper: dict[str, float] | None = None) -> dict[str, Path]:
    """``comparison.md``, ``comparison.json``, ``comparison.png`` and ``predictions.jsonl`` (each question
    with its gold answers and every system's answer and documents read) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / COMPARE_MARKDOWN, "json": out / COMPARE_JSON, "chart": out / COMPARE_CHART,
             "predictions": out / COMPARE_PREDICTIONS}
    paths["markdown"].write_text(markdown_table(result, paper) + "\n", encoding="utf-8")
    write_json(paths["json"], {**result.to_dict(), **({"paper": paper} if paper else {})})
    bar_chart(result, paths["chart"])
    with open(paths["predictions"], "w", encoding="utf-8") as f:
        for i, question in enumerate(result.questions):
            row = {"question": question, "answers": result.golds[i],
                   **{name: {"answer": result.predictions[name][i], "read": result.read[name][i]}
                      for name in result.predictions}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return paths
