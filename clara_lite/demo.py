"""The main job: the whole pipeline on the embedded model, on CPU, in a few minutes, and proof that it reads.

hardware profile -> example data (validated) -> stage1 -> stage2 -> stage3 -> held-out questions about
people who exist nowhere but in their (never trained on) documents, answered by CLaRa beside two
controls: the base model closed-book, and CLaRa with its memory vectors zeroed -> a question answered
with retrieval -> exported zip. Rerunning resumes or skips finished work.

Why these settings (README, "The demo"): documents are one or two sentences (~25 tokens), so 32
tokens at compression 4 (8 memory vectors each) keep all of it. ``memory_space="tokens"``: the decoder
reads each memory vector as the mixture of token embeddings the LM head predicts from it, inputs it
can read before any training; with upstream's raw hidden states a 135M model did not learn to read in
this budget (held-out EM 0.08). ``chunk_loss_weight``: memory vector i learns to predict its document's
i-th 4 tokens, so compression is taught from the first step. Retrieval still scores the hidden states
(they tell documents apart: Recall@1 0.98 before stage3). stage1 teaches compression (a document's
questions and paraphrase from its memory), stage2 the answer prompt the evaluation uses (each question's
own document), stage3 the retrieval the example question shows (top-1 of 4); learning rates are high
because the schedule is short.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .core.hardware import describe, detect_hardware
from .core.layout import RunLayout, write_json
from .model.data import read_jsonl, validate_file
from .model.evaluation import exact_match
from .model.modeling import ClaraModel
from .model.size import model_params_b
from .model.stages import ORDER, get_stage
from .pipeline.examples import write_example_data
from .serve.compare import CLARA, CLARA_ZEROED, CLOSED_BOOK, compare
from .serve.export import export_zip
from .serve.report import write_report
from .train.recipe import train

log = logging.getLogger(__name__)

# the demo's recipe (see the module doc)
MODEL = {"doc_max_length": 32, "compr_rate": 4, "generation_top_k": 1, "lora_r": 16, "lora_dropout": 0.0,
         "memory_space": "tokens", "chunk_loss_weight": 1.0, "mse_weight": 0.0, "contrastive_weight": 2.0}
# 384 people to learn from, 16 never seen; stage2 reads each question's own document, stage3 picks it among 4
DATA = {"n_facts": 400, "heldout": 16, "n_candidates": 4, "stage2_candidates": 1}
STEPS = dict(zip(ORDER, (24, 60, 20), strict=True))
LR = dict(zip(ORDER, (2e-3, 2e-3, 2e-3), strict=True))
ROWS_PER_STEP = 8
HELDOUT = "heldout"
SYSTEMS = (CLARA, CLOSED_BOOK, CLARA_ZEROED)
LABELS = {CLARA: "CLaRa", CLOSED_BOOK: "closed-book (base model, no documents)",
          CLARA_ZEROED: "CLaRa, memory vectors zeroed"}


def run_demo(run_dir: str | Path = "runs/demo", base: str = "smollm2-135m", steps: dict | None = None) -> dict:
    started = time.perf_counter()
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    steps = {**STEPS, **(steps or {})}
    last = get_stage(ORDER[-1])  # the held-out rows are questions over candidates, as the last stage reads
    print(describe(detect_hardware(model_params_b=model_params_b(base))), flush=True)

    paths = write_example_data(run_dir / "data", **DATA)
    for name, path in paths.items():
        report = validate_file(path, last if name == HELDOUT else get_stage(name))
        print(report.format().splitlines()[0], flush=True)
        if not report.ok:
            raise ValueError(report.format())

    for stage in ORDER:
        train(run_dir, stage, data=str(paths[stage]), model_options={"base_model": base, **MODEL},
              train_options={"max_steps": steps[stage], "micro_batch_size": ROWS_PER_STEP, "grad_accum_steps": 1,
                             "lr": LR[stage], "log_steps": 5, "save_steps": max(steps[stage] // 2, 1),
                             "warmup_ratio": 0.1})

    model = ClaraModel.from_pretrained(layout.final(last.name))
    held = read_jsonl(paths[HELDOUT], last)
    result = compare(model, held, SYSTEMS, max_new_tokens=8, batch_size=16,
                     info={"model": str(layout.final(last.name)), "data": str(paths[HELDOUT])})
    write_report(result, layout.benchmark(f"{HELDOUT}-{result.setting}"))
    write_json(layout.heldout_eval, result.to_dict())

    row = held[0]
    answers, topk = model.generate_from_questions([row.question], [list(row.docs)], max_new_tokens=8)
    picked = topk[0].tolist()
    print(f"\nQ: {row.question}\nA: {answers[0]!r} (gold {row.answers[0]!r}; "
          f"{'right' if exact_match(answers[0], row.answers) else 'wrong'})")
    print(f"   retrieved {picked} of {len(row.docs)} candidates (gold {list(row.pos_index)}): {row.docs[picked[0]]!r}")
    n_docs = len({row.docs[i] for row in held for i in row.pos_index})
    print(f"\nheld-out: {result.count} questions about {n_docs} people in documents never trained on "
          f"({result.setting}: CLaRa picks top-{result.top_k} of {len(row.docs)} candidates)")
    for name in SYSTEMS:
        scores = result.scores[name]
        recall = f"  Recall@{result.top_k} {scores['recall_at_k']:.2f}" if scores.get("recall_at_k") is not None else ""
        print(f"  {LABELS[name]:<40} EM {scores['em']:.2f}  F1 {scores['f1']:.2f}{recall}")
    for name in SYSTEMS:
        print(f"  e.g. {LABELS[name]}: {result.predictions[name][0]!r}")

    summary = {"run_dir": str(run_dir), "final": {s: str(layout.final(s)) for s in ORDER},
               "heldout": {name: result.scores[name] for name in SYSTEMS}}
    summary["zip"] = str(export_zip(run_dir, out=run_dir / "clara_model.zip"))
    summary["minutes"] = round((time.perf_counter() - started) / 60, 1)
    print("\nrun folder:   ", run_dir)
    for stage, path in summary["final"].items():
        print(f"{stage} final: ", path)
    print("exported zip: ", summary["zip"])
    print(f"took {summary['minutes']} min")
    return summary
