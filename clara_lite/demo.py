"""The main job: the whole pipeline on the embedded model, on CPU, in a few minutes, and proof that it reads.

hardware profile -> example data (validated) -> stage1 -> stage2 -> stage3 -> held-out questions about
people who exist nowhere but in their (never trained on) documents, answered by CLaRa beside two
controls: the base model closed-book, and CLaRa with its memory vectors zeroed -> a question answered
with retrieval -> exported zip. Rerunning resumes or skips finished work.

Why these settings (README, "The demo"): documents are one or two sentences (~25 tokens), so 32
tokens at compression 4 (8 memory vectors each) keep all of it. ``memory_space="tokens"``: the decoder
reads each memory vector as the mixture of token embeddings the LM head predicts from it, inputs it
can read before any training; with upstream's raw hidden states a 135M model did not learn to read in
this budget (measured: README, "The demo"). ``segment_loss_weight``: memory vector i learns to predict its document's
i-th 4 tokens, so compression is taught from the first step. Retrieval still scores the hidden states
(they tell documents apart before stage3 trains). stage1 teaches compression (a document's
questions and paraphrase from its memory), stage2 the answer prompt the evaluation uses (each question's
own document), stage3 the retrieval the example question shows (top-1 of 4); learning rates are high
because the schedule is short.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from .core.config import ClaraConfig
from .core.hardware import describe, detect_hardware
from .core.layout import RunLayout, write_json
from .model.data import read_jsonl, validate_file
from .model.evaluation import exact_match
from .model.modeling import ClaraModel
from .model.size import model_params_b
from .model.stages import ORDER, get_stage
from .pipeline.examples import write_example_data
from .serve.compare import CLARA, CLARA_ZEROED, CLOSED_BOOK
from .serve.evaluate import run_comparison
from .serve.export import export_zip
from .train.launch import train
from .train.recipe import Recipe, load_recipe

log = logging.getLogger(__name__)

RECIPE = "demo"  # clara_lite/recipes/demo.yaml: model, steps, rates and the example world (see the module doc)
HELDOUT = "heldout"
SYSTEMS = (CLARA, CLOSED_BOOK, CLARA_ZEROED)
LABELS = {CLARA: "CLaRa", CLOSED_BOOK: "closed-book (base model, no documents)",
          CLARA_ZEROED: "CLaRa, memory vectors zeroed"}


def write_recipe_data(recipe: Recipe, run_dir: Path) -> dict[str, Path]:
    """The example world of ``recipe`` (its ``example_data``) written into ``<run_dir>/data``: {file: path}."""
    if recipe.example_data is None:
        raise ValueError(f"{recipe.path}: no example_data section: pass --data or --data-dir")
    return write_example_data(run_dir / "data", **asdict(recipe.example_data))


def run_demo(run_dir: str | Path = "runs/demo", base: str | None = None, steps: dict | None = None,
             recipe: str | Path = RECIPE) -> dict:
    """The demo's recipe on ``base`` (default: the recipe's), ``steps`` overriding its steps per stage."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    recipe = load_recipe(recipe)
    base = base or recipe.model.get("base_model") or ClaraConfig().base_model
    last = get_stage(ORDER[-1])  # the held-out rows are questions over candidates, as the last stage reads
    print(describe(detect_hardware(model_params_b=model_params_b(base))), flush=True)

    paths = write_recipe_data(recipe, run_dir)
    for name, path in paths.items():
        report = validate_file(path, last if name == HELDOUT else get_stage(name))
        print(report.format().splitlines()[0], flush=True)
        if not report.ok:
            raise ValueError(report.format())

    for stage in ORDER:
        shorter = {"max_steps": steps[stage], "save_steps": max(steps[stage] // 2, 1)} if steps else {}
        train(run_dir, stage, data=str(paths[stage]), model_options={"base_model": base}, train_options=shorter,
              recipe=recipe)

    model = ClaraModel.from_pretrained(layout.final(last.name))
    held = read_jsonl(paths[HELDOUT], last)
    result, _ = run_comparison(model, held, SYSTEMS, max_new_tokens=8, batch_size=16,
                               report_dir=layout.benchmark(f"{HELDOUT}-oracle"),
                               info={"model": str(layout.final(last.name)), "data": str(paths[HELDOUT])})
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
