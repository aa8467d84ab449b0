"""The main job: the whole pipeline on the embedded model, on CPU, in a few minutes.

hardware profile -> example data (validated) -> stage1 -> stage2 -> stage3 -> held-out evaluation
-> a question answered with retrieval -> exported zip. Rerunning resumes or skips finished work.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .data import read_jsonl, validate_file
from .evaluation import evaluate_model
from .examples import write_example_data
from .hardware import describe, detect_hardware
from .layout import RunLayout, write_json
from .model.modeling import ClaraModel
from .model.size import model_params_b
from .serve.export import export_zip
from .stages import ORDER, get_stage
from .train.recipe import train

log = logging.getLogger(__name__)

# the demo's recipe: short documents, few memory vectors, a few steps per stage
MODEL = {"doc_max_length": 64, "compr_rate": 8, "generation_top_k": 2, "lora_r": 16}
STEPS = dict(zip(ORDER, (12, 12, 8), strict=True))  # a pipeline check, not a good model: minutes on 2 CPU cores
LR = dict(zip(ORDER, (5e-4, 3e-4, 1e-4), strict=True))
HELDOUT = "heldout"


def run_demo(run_dir: str | Path = "runs/demo", base: str = "smollm2-135m", steps: dict | None = None) -> dict:
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    steps = {**STEPS, **(steps or {})}
    last = get_stage(ORDER[-1])  # the held-out rows are questions over candidates, as the last stage reads
    print(describe(detect_hardware(model_params_b=model_params_b(base))), flush=True)

    paths = write_example_data(run_dir / "data")
    for name, path in paths.items():
        report = validate_file(path, last if name == HELDOUT else get_stage(name))
        print(report.format().splitlines()[0], flush=True)
        if not report.ok:
            raise ValueError(report.format())

    for stage in ORDER:
        train(run_dir, stage, data=str(paths[stage]), model_options={"base_model": base, **MODEL},
              train_options={"max_steps": steps[stage], "micro_batch_size": 1, "grad_accum_steps": 2,
                             "lr": LR[stage], "log_steps": 4, "save_steps": max(steps[stage] // 2, 1),
                             "warmup_ratio": 0.1})

    model = ClaraModel.from_pretrained(layout.final(last.name))
    held = read_jsonl(paths[HELDOUT], last)
    result = evaluate_model(model, held, retrieve=True, max_new_tokens=16)
    predictions = result.pop("predictions")
    write_json(layout.heldout_eval, result)
    row = held[0]
    answers, topk = model.generate_from_questions([row.question], [list(row.docs)], max_new_tokens=16)
    print(f"\nQ: {row.question}\nA: {answers[0]!r} (gold {row.answers[0]!r}); retrieved docs "
          f"{topk[0].tolist()} (gold {list(row.pos_index)})", flush=True)
    print(f"held-out: EM {result['em']:.2f}  F1 {result['f1']:.2f}  Recall@1 {result.get('recall_at_1', 0):.2f} "
          f"over {result['count']} questions (e.g. {predictions[0]!r})")

    summary = {"run_dir": str(run_dir), "final": {s: str(layout.final(s)) for s in ORDER}, "heldout": result}
    summary["zip"] = str(export_zip(run_dir, out=run_dir / "clara_model.zip"))
    print("\nrun folder:   ", run_dir)
    for stage, path in summary["final"].items():
        print(f"{stage} final: ", path)
    print("exported zip: ", summary["zip"])
    return summary
