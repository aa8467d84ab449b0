"""Does it learn on real text? Stage1 + stage2 on SmolLM2-135M with the shared upstream rows 0-899
(Wikipedia-style documents, ~8 synthetic questions each), then closed-book, text RAG and CLaRa (and
CLaRa with its memory vectors zeroed) on questions about rows 900-999, documents never trained on.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/real_text.py --run-dir runs/real-text     # ~60 min on a 2-core CPU (results: benchmarks/README.md)
    python benchmarks/real_text.py --run-dir /tmp/rt-check --train-rows 50 --heldout-rows 10 \\
        --stage1-steps 2 --stage2-steps 2 --questions-per-doc 1     # the same path in a few minutes

Rerunning the same command resumes (each stage from its newest checkpoint) and re-scores. Printed:
minutes per phase, the comparison table (also run-dir/compare/comparison.{md,json,png}), the loss
curves' paths (run-dir/stage{1,2}/loss.png, with held-out loss and EM/F1 as they trained).

Why these settings (benchmarks/README.md, "Real text"): the budget is ~1,000 training rows on this
CPU, so stage1 spends it where it teaches compression most (a stage1 row asks all ~8 questions of
its document from one compression) and stage2 teaches the answer prompt the evaluation uses; a
short schedule wants LoRA learning rates above the stages' defaults (tuned for millions of rows).
``--memory-space tokens --chunk-loss-weight 1`` (the default here) has the decoder read each memory
vector as the token mixture the LM head predicts from it and teaches vector i its document's i-th
chunk; ``--memory-positions chunks`` (the default here) puts memory token i at the position of its chunk's last
token, beside what it compresses; ``--memory-space hidden --memory-positions after --chunk-loss-weight 0
--mse-weight 0.1`` is upstream's recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "upstream_pretrain_data.jsonl"


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
        # small held-out files scored while training (the loss over every row, answers for a few)
        "eval1": _write(data_dir / "eval_stage1.jsonl", held[:12]),
        "eval2": _write(data_dir / "eval_stage2.jsonl", _questions(held[:48], 1)),
    }


def main() -> None:
    from clara_lite.core.config import MEMORY_POSITIONS, MEMORY_SPACES  # light: no torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/real-text")
    p.add_argument("--data", default=str(SHARED), help="upstream stage1 rows (the shared 1,000-row file)")
    p.add_argument("--model", default="smollm2-135m", help="base model (tiny-random: the smoke run in the tests)")
    p.add_argument("--train-rows", type=int, default=900, help="the first N rows train")
    p.add_argument("--heldout-rows", type=int, default=100, help="the last N rows are scored")
    p.add_argument("--questions-per-doc", type=int, default=2, help="held-out questions per document (0: all)")
    p.add_argument("--stage1-steps", type=int, default=64)
    p.add_argument("--stage2-steps", type=int, default=192)
    p.add_argument("--rows-per-step", type=int, default=4)
    p.add_argument("--lr1", type=float, default=2e-3)
    p.add_argument("--lr2", type=float, default=1e-3)
    p.add_argument("--compr-rate", type=int, default=4)
    p.add_argument("--memory-space", default="tokens", choices=MEMORY_SPACES,
                   help="'hidden': upstream's last hidden states; 'tokens': readable from the first step")
    p.add_argument("--memory-positions", default="chunks", choices=MEMORY_POSITIONS,
                   help="'chunks': memory token i sits at the position of its chunk's last token")
    p.add_argument("--chunk-loss-weight", type=float, default=1.0)
    p.add_argument("--mse-weight", type=float, default=0.0)
    p.add_argument("--doc-max-length", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--systems", default="closed-book,text-rag,clara,clara-zeroed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from clara_lite.core.layout import RunLayout, write_json
    from clara_lite.model.data import read_jsonl
    from clara_lite.model.modeling import ClaraModel
    from clara_lite.serve.compare import compare
    from clara_lite.serve.report import markdown_table, write_report
    from clara_lite.train.recipe import train

    run_dir = Path(args.run_dir)
    layout = RunLayout(run_dir)
    files = prepare(run_dir / "data", Path(args.data), args.train_rows, args.heldout_rows, args.questions_per_doc)
    model_options = {"base_model": args.model, "doc_max_length": args.doc_max_length,
                     "compr_rate": args.compr_rate, "generation_top_k": 1, "lora_r": 16, "lora_dropout": 0.0,
                     "memory_space": args.memory_space, "memory_positions": args.memory_positions,
                     "chunk_loss_weight": args.chunk_loss_weight,
                     "mse_weight": args.mse_weight}
    common = {"micro_batch_size": 1, "grad_accum_steps": args.rows_per_step, "warmup_ratio": 0.05, "log_steps": 4,
              "save_minutes": 10.0, "eval_questions": 12}
    plans = {
        "stage1": {**common, "max_steps": args.stage1_steps, "lr": args.lr1, "eval_data": str(files["eval1"]),
                   "eval_steps": max(args.stage1_steps // 4, 1), "save_steps": max(args.stage1_steps // 4, 1)},
        "stage2": {**common, "max_steps": args.stage2_steps, "lr": args.lr2, "eval_data": str(files["eval2"]),
                   "eval_steps": max(args.stage2_steps // 4, 1), "save_steps": max(args.stage2_steps // 4, 1),
                   "eval_questions": 24},
    }
    load = os.getloadavg()
    minutes = {}
    for stage, options in plans.items():
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
    print(f"\nminutes: {timing['minutes']} (total {timing['total_minutes']}); load average at start "
          f"{timing['loadavg_at_start']}, at end {timing['loadavg_at_end']}; {timing['threads']} torch threads")
    for name, path in {**paths, "stage1 loss": layout.loss_plot("stage1"), "stage2 loss": layout.loss_plot("stage2")}.items():
        print(f"{name:<12} {path}")


if __name__ == "__main__":
    main()
