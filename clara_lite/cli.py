"""``clara-lite``: the terminal face of the package. Each subcommand is a thin call into it."""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("clara_lite")


def _doctor(args) -> int:
    import os

    import torch

    from .hardware import cpu_threads_note, describe, detect_hardware
    from .models import resolve

    profile = detect_hardware(model_params_b=resolve(args.base).params_b)
    print(describe(profile))
    if profile.device.kind == "cpu":
        print("cpu threads   " + cpu_threads_note(torch.get_num_threads(), os.cpu_count() or 1,
                                                  os.getloadavg()[0], os.environ.get("OMP_WAIT_POLICY")))
    return 0


def _validate(args) -> int:
    from .data import validate_file

    report = validate_file(args.file, args.stage, top_k=args.top_k)
    print(report.format())
    return 0 if report.ok else 1


def _eval(args) -> int:
    from .data import read_jsonl
    from .evaluation import evaluate_model
    from .modeling import ClaraModel

    model = ClaraModel.from_pretrained(args.model, **({"base_path": args.base_path} if args.base_path else {}))
    rows = read_jsonl(args.data, args.stage)[: args.limit or None]
    result = evaluate_model(model, rows, retrieve=args.stage == "stage3" and "query_reasoner" in model.adapter_names,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, top_k=args.top_k)
    predictions = result.pop("predictions")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for row, pred in zip(rows, predictions, strict=True):
                f.write(json.dumps({"question": row.question, "prediction": pred, "answers": list(row.answers)}) + "\n")
    print(json.dumps(result, indent=2))
    return 0


_MODEL_OPTS = {"base": "base_model", "compr_rate": "compr_rate", "doc_max_length": "doc_max_length",
               "top_k": "generation_top_k", "lora_r": "lora_r", "lora_dropout": "lora_dropout",
               "quantization": "quantization",
               "mse_weight": "mse_weight", "contrastive_weight": "contrastive_weight",
               "encoder_layout": "encoder_layout"}
_TRAIN_OPTS = {"max_steps": "max_steps", "epochs": "epochs", "batch_size": "micro_batch_size",
               "grad_accum": "grad_accum_steps", "save_steps": "save_steps", "save_minutes": "save_minutes",
               "keep": "keep", "lr": "lr", "seed": "seed", "mixed_precision": "mixed_precision",
               "log_steps": "log_steps", "report_to": "report_to", "gradient_checkpointing": "gradient_checkpointing"}


def _explicit(args, mapping: dict) -> dict:
    """Only the options the user gave: the rest come from run.json or the hardware profile."""
    return {dest: getattr(args, src) for src, dest in mapping.items() if getattr(args, src) is not None}


def _train(args) -> int:
    from .run import train
    from .training import TrainingInterrupted

    try:
        results = train(args.run_dir, args.stage, data=args.data, data_dir=args.data_dir,
                        model_options=_explicit(args, _MODEL_OPTS), train_options=_explicit(args, _TRAIN_OPTS),
                        init_from=args.init_from, base_path=args.base_path)
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        return 130
    for stage, result in results.items():
        print(f"{stage}: {result if isinstance(result, str) else 'final after ' + str(result['steps']) + ' steps'}"
              f" -> {args.run_dir}/{stage}/final")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.run_dir, base=args.base)
    return 0


def _export(args) -> int:
    from .export import export_zip

    out = export_zip(args.run_dir, stage=args.stage, out=args.out)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _ask(args) -> int:
    from .ask import answer, load, read_docs
    from .hardware import detect_hardware

    kwargs = {"base_path": args.base_path} if args.base_path else {}
    profile = detect_hardware()
    if profile.device.kind == "cuda":  # else float32 on CPU
        kwargs.update(device_map=profile.device.torch_device, dtype=profile.dtype)
    docs = read_docs(args.docs)
    model = load(args.model, **kwargs)
    text, retrieved = answer(model, args.question, docs, top_k=args.top_k, max_new_tokens=args.max_new_tokens)
    print(f"answer: {text}")
    if retrieved is None:
        print(f"(read all {len(docs)} documents)")
    else:
        print("retrieved:")
        for i in retrieved:
            print(f"  [{i}] {docs[i][:80]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clara-lite", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("doctor", help="show the hardware profile, its reasons and library versions")
    d.add_argument("--base", default="smollm2-135m", help="base model the plan is for")
    d.set_defaults(func=_doctor)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    v = data.add_parser("validate", help="report every bad line of a training JSONL")
    v.add_argument("file")
    v.add_argument("--stage", required=True, choices=["stage1", "stage2", "stage3"])
    v.add_argument("--top-k", type=int, default=None)
    v.set_defaults(func=_validate)
    # extract, chunk, synthesize, negatives, split, convert, build
    from .pipeline.commands import add_data_commands

    add_data_commands(data)

    e = sub.add_parser("eval", help="EM / F1 (and Recall@k for stage3) of a model on a stage2/3 JSONL")
    e.add_argument("--model", required=True, help="model folder, upstream checkpoint or zip")
    e.add_argument("--data", required=True)
    e.add_argument("--stage", default="stage3", choices=["stage2", "stage3"])
    e.add_argument("--base-path", default=None, help="local copy of the base model (offline machines)")
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--top-k", type=int, default=None)
    e.add_argument("--out", default=None, help="write predictions as JSONL")
    e.set_defaults(func=_eval)

    t = sub.add_parser("train", help="train a stage (or all) in a run folder; reruns resume")
    t.add_argument("--stage", required=True, choices=["stage1", "stage2", "stage3", "all"])
    t.add_argument("--run-dir", required=True, help="run folder (on Drive in Colab)")
    t.add_argument("--data", default=None, help="JSONL for this stage (remembered in run.json)")
    t.add_argument("--data-dir", default=None, help="folder with stage1.jsonl, stage2.jsonl, stage3.jsonl")
    t.add_argument("--base", default=None, help="base model: registry name, Hub id or folder")
    t.add_argument("--base-path", default=None, help="local copy of the base model (offline machines)")
    t.add_argument("--init-from", default=None, help="start the stage from this saved model (dir or zip)")
    for flag, typ in (("--max-steps", int), ("--epochs", float), ("--batch-size", int), ("--grad-accum", int),
                      ("--save-steps", int), ("--save-minutes", float), ("--keep", int), ("--lr", float),
                      ("--seed", int), ("--log-steps", int), ("--compr-rate", int), ("--doc-max-length", int),
                      ("--top-k", int), ("--lora-r", int), ("--lora-dropout", float), ("--mse-weight", float),
                      ("--contrastive-weight", float)):
        t.add_argument(flag, type=typ, default=None)
    t.add_argument("--quantization", choices=["4bit", "8bit"], default=None)
    t.add_argument("--encoder-layout", choices=["compact", "upstream"], default=None)
    t.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None)
    t.add_argument("--gradient-checkpointing", action="store_true", default=None)
    t.add_argument("--report-to", nargs="*", default=None, help="e.g. tensorboard wandb")
    t.set_defaults(func=_train)

    m = sub.add_parser("demo", help="the whole pipeline on the embedded model, on CPU, in minutes")
    m.add_argument("--run-dir", default="runs/demo")
    m.add_argument("--base", default="smollm2-135m")
    m.set_defaults(func=_demo)

    x = sub.add_parser("export", help="zip a run's final model (adapters, config, tokenizer, model card)")
    x.add_argument("--run-dir", required=True)
    x.add_argument("--stage", default=None, choices=["stage1", "stage2", "stage3"],
                   help="default: the newest final stage")
    x.add_argument("--out", default=None, help="zip to write (default: exports/<run>-<stage>.zip beside runs/)")
    x.set_defaults(func=_export)

    a = sub.add_parser("ask", help="answer a question from documents with a saved model (zip or folder)")
    a.add_argument("--model", required=True, help="exported zip or model folder")
    a.add_argument("--question", required=True)
    a.add_argument("--docs", required=True, help="JSONL ({\"doc\": ...} lines or training rows) or a folder of .txt/.md")
    a.add_argument("--top-k", type=int, default=None, help="documents retrieved (stage3 models)")
    a.add_argument("--base-path", default=None, help="local copy of the base model (offline machines)")
    a.add_argument("--max-new-tokens", type=int, default=64)
    a.set_defaults(func=_ask)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "peft", "bitsandbytes", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
