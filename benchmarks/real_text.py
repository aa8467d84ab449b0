"""Does it learn on real text? Stage1 + stage2 on SmolLM2-135M with the shared upstream rows 0-899
(Wikipedia-style documents, ~8 synthetic questions each), then closed-book, text RAG and CLaRa (and
CLaRa with its memory vectors zeroed) on questions about rows 900-999, documents never trained on.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/real_text.py --run-dir runs/real-text     # ~2 h on a 2-core CPU without AMX (results: benchmarks/README.md)
    python benchmarks/real_text.py --run-dir /tmp/rt-check --train-rows 50 --heldout-rows 10 \\
        --stage1-steps 2 --stage2-steps 2 --questions-per-doc 1     # the same path in a few minutes
    OMP_WAIT_POLICY=PASSIVE python benchmarks/real_text.py --recipe real_text_distill --run-dir runs/real-text-distill
        # stage2 trained towards the text-reading teacher's answers (distillation; --targets, --teacher-cut)

Rerunning the same command resumes (each stage from its newest checkpoint) and re-scores. Printed:
minutes per phase, the comparison table with the share of text RAG's gain over closed-book CLaRa recovers and
the paired bootstrap intervals (also run-dir/compare/comparison.{md,json,png}), the learning curve (held-out F1
and cover-EM against documents compressed in training, both stages, run-dir/compare/learning_curve.{png,json}:
the same 48 held-out questions, scored every max_steps / 4 steps while training) and the loss curves' paths
(run-dir/stage{1,2}/loss.png).

Why these settings (benchmarks/README.md, "Real text"): the budget is ~1,000 training rows on this
CPU, so stage1 spends it where it teaches compression most (a stage1 row asks all ~8 questions of
its document from one compression) and stage2 teaches the answer prompt the evaluation uses; a
short schedule wants LoRA learning rates above the stages' defaults (tuned for millions of rows).
The settings are the recipe ``clara_lite/recipes/real_text.yaml`` (``--recipe`` takes another file; any
model or training flag of ``clara-lite train`` overrides one value of it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "upstream_pretrain_data.jsonl"
CURVE_DOCS = 48  # held-out documents whose first question is scored while training


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _questions(rows: list[dict], per_doc: int) -> list[dict]:
    """Stage2 rows: each document's first ``per_doc`` questions (0: all), the document as its only candidate."""
    out = []
    for row in rows:
        pairs = list(zip(row["question"], row["answers"], strict=True))
        for q, a in pairs[: per_doc or None]:
            out.append({"question": q, "docs": row["docs"], "gold_answer": a, "pos_index": [0]})
    return out


def prepare(data_dir: Path, source: Path, train_rows: int, heldout_rows: int, per_doc: int) -> dict[str, Path]:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, held = rows[:train_rows], rows[len(rows) - heldout_rows:]
    stage2 = _questions(train, 0)
    random.Random(0).shuffle(stage2)  # the runner's order is seeded too; this only mixes documents in the file
    return {
        "stage1": _write(data_dir / "stage1.jsonl", train),
        "stage2": _write(data_dir / "stage2.jsonl", stage2),
        "heldout": _write(data_dir / "heldout.jsonl", _questions(held, per_doc)),
        # scored while training, for the learning curve: the first question of each of 48 held-out documents,
        # the same questions in both stages (stage1's rows cut to that question also give its held-out loss)
        "eval1": _write(data_dir / "eval_stage1.jsonl", [_first_question(r) for r in held[:CURVE_DOCS]]),
        "eval2": _write(data_dir / "eval_stage2.jsonl", _questions(held[:CURVE_DOCS], 1)),
    }


def _first_question(row: dict) -> dict:
    return {**row, "question": row["question"][:1], "answers": row["answers"][:1]}


def learning_curve(layout, stages: dict[str, int], result, curve_questions: list[str], png: Path) -> dict:
    """Held-out F1 and cover-EM as training went, against documents compressed (stage1's rows, then stage2's
    questions, each reading its document), from the stages' ``metrics.jsonl``; closed-book, text RAG and the
    final zeroed control on the same questions as lines. ``stages``: rows per optimizer step of each stage."""
    from matplotlib.figure import Figure

    from clara_lite.model.evaluation import per_question

    points, seen = [], 0
    for stage, rows_per_step in stages.items():
        last = 0
        for row in (json.loads(x) for x in layout.metrics(stage).read_text(encoding="utf-8").splitlines() if x):
            if "eval_f1" in row:
                points.append({"stage": stage, "step": row["step"], "documents": seen + row["step"] * rows_per_step,
                               "f1": row["eval_f1"], "cover_em": row["eval_cover_em"]})
            last = max(last, row.get("step", 0))
        seen += last * rows_per_step
    wanted = set(curve_questions)
    picks = [i for i, q in enumerate(result.questions) if q in wanted]
    lines = {}
    for name, answers in result.predictions.items():
        scored = per_question([answers[i] for i in picks], [result.golds[i] for i in picks])
        lines[name] = {key: sum(v) / len(v) for key, v in scored.items() if key != "em"}
    fig = Figure(figsize=(10, 4))
    for ax, (key, label) in zip(fig.subplots(1, 2), (("f1", "F1"), ("cover_em", "cover-EM")), strict=True):
        for stage in stages:
            mine = [p for p in points if p["stage"] == stage]
            ax.plot([p["documents"] for p in mine], [p[key] for p in mine], "o-", label=f"CLaRa, {stage}")
        for name, style in (("closed-book", ":"), ("text-rag", "--"), ("clara-zeroed", "-.")):
            if name in lines:
                ax.axhline(lines[name][key], linestyle=style, color="gray", label=f"{name} (final)")
        ax.set_xlabel("documents compressed in training")
        ax.set_ylabel(f"held-out {label}")
        ax.set_title(f"{label}, {len(picks)} held-out questions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    curve = {"questions": len(picks), "points": points, "final": lines}
    png.with_suffix(".json").write_text(json.dumps(curve, indent=1) + "\n", encoding="utf-8")
    return curve


def build_parser():
    """The benchmark's own flags (data, steps, scoring) plus every model and training setting as
    ``clara-lite train`` has it (from the config fields); ``--recipe`` gives the rest."""
    from clara_lite.core.config import ClaraConfig, TrainConfig, add_flags

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/real-text")
    p.add_argument("--data", default=str(SHARED), help="upstream stage1 rows (the shared 1,000-row file)")
    p.add_argument("--recipe", default="real_text", help="recipe file or shipped recipe name (clara_lite/recipes/)")
    p.add_argument("--train-rows", type=int, default=900, help="the first N rows train")
    p.add_argument("--heldout-rows", type=int, default=100, help="the last N rows are scored")
    p.add_argument("--questions-per-doc", type=int, default=2, help="held-out questions per document (0: all)")
    p.add_argument("--stage1-steps", type=int, default=None, help="stage1's max_steps (default: the recipe's)")
    p.add_argument("--stage2-steps", type=int, default=None, help="stage2's max_steps (default: the recipe's)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--systems", default="closed-book,text-rag,clara,clara-zeroed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_flags(p.add_argument_group("model (over the recipe's)"), ClaraConfig)
    add_flags(p.add_argument_group("training, every stage (over the recipe's)"), TrainConfig)
    return p


def main() -> None:
    from clara_lite.core.config import ClaraConfig, TrainConfig, given

    args = build_parser().parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from clara_lite.core.layout import RunLayout, write_json
    from clara_lite.model.data import read_jsonl
    from clara_lite.model.modeling import ClaraModel
    from clara_lite.serve.compare import compare
    from clara_lite.serve.report import markdown_table, write_report
    from clara_lite.train.launch import train
    from clara_lite.train.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    run_dir = Path(args.run_dir)
    layout = RunLayout(run_dir)
    files = prepare(run_dir / "data", Path(args.data), args.train_rows, args.heldout_rows, args.questions_per_doc)
    model_options = {**recipe.model, **given(args, ClaraConfig)}
    load = os.getloadavg()
    minutes, rows_per_step = {}, {}
    for stage, steps in (("stage1", args.stage1_steps), ("stage2", args.stage2_steps)):
        options = {**recipe.train_options(stage), **given(args, TrainConfig)}
        if steps is not None:
            options["max_steps"] = steps
        every = max(options["max_steps"] // 4, 1)  # held-out scores and checkpoints four times a stage
        options = {"eval_data": str(files[f"eval{stage[-1]}"]), "eval_steps": every, "save_steps": every,
                   **options, "eval_questions": CURVE_DOCS}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        rows_per_step[stage] = TrainConfig(**{k: v for k, v in options.items() if k in known}).step_rows()
        start = time.perf_counter()
        train(run_dir, stage, data=str(files[stage]), model_options=model_options, train_options=options)
        minutes[stage] = (time.perf_counter() - start) / 60
        print(f"{stage}: {minutes[stage]:.1f} min", flush=True)

    start = time.perf_counter()
    model = ClaraModel.from_pretrained(layout.final("stage2"))
    held = read_jsonl(files["heldout"], "stage2")
    result = compare(model, held, args.systems.split(","), setting="oracle", top_k=1,
                     max_new_tokens=args.max_new_tokens,
                     info={"model": str(layout.final("stage2")), "data": f"{args.data} rows "
                           f"{args.train_rows}-{args.train_rows + args.heldout_rows - 1} (held out)"})
    minutes["compare"] = (time.perf_counter() - start) / 60
    paths = write_report(result, run_dir / "compare")
    timing = {"minutes": {k: round(v, 1) for k, v in minutes.items()}, "total_minutes": round(sum(minutes.values()), 1),
              "loadavg_at_start": [round(x, 2) for x in load], "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
              "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    write_json(run_dir / "compare" / "timing.json", timing)
    print()
    print(markdown_table(result))
    curve_png = run_dir / "compare" / "learning_curve.png"
    curve = learning_curve(layout, rows_per_step, result,
                           [r.question for r in read_jsonl(files["eval2"], "stage2")], curve_png)
    print(f"\nlearning curve ({curve['questions']} held-out questions): "
          + ", ".join(f"{p['documents']} docs F1 {p['f1']:.3f} cover-EM {p['cover_em']:.3f}" for p in curve["points"]))
    print(f"\nminutes: {timing['minutes']} (total {timing['total_minutes']}); load average at start "
          f"{timing['loadavg_at_start']}, at end {timing['loadavg_at_end']}; {timing['threads']} torch threads")
    shown = {**paths, "curve": curve_png, "stage1 loss": layout.loss_plot("stage1"), "stage2 loss": layout.loss_plot("stage2")}
    if layout.teacher_answers.is_file():  # a recipe with targets teacher|both: what the teacher answered
        shown["teacher"] = layout.teacher_answers
    for name, path in shown.items():
        print(f"{name:<12} {path}")


if __name__ == "__main__":
    main()
