"""``clara-lite``: the terminal face of the package. Each subcommand is a thin call into it.

Model and training flags are built from the fields of :class:`~clara_lite.core.config.ClaraConfig` and
:class:`~clara_lite.core.config.TrainConfig` (name, type, choices, help): one home per setting. Stage
names become stages here, at the edge.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from . import __version__
from .core import source
from .core.config import ClaraConfig, TrainConfig, add_flags, given
from .core.errors import ClaraError, exit_status
from .core.hardware import CPU_FLAGS, cpu_threads_note, decide_serving, describe, detect_hardware, dtype_name
from .core.secrets import redact
from .demo import run_demo, write_recipe_data
from .model.data import read_jsonl, validate_file
from .model.evaluation import evaluate_model
from .model.inputs import add_special_tokens
from .model.modeling import ClaraModel
from .model.size import model_params_b
from .model.stages import ALL, ORDER, get_stage
from .pipeline.chunk import load_tokenizer
from .pipeline.commands import add_data_commands
from .pipeline.questions import load_questions
from .serve.ask import answer, load, read_docs
from .serve.commands import add_index_options, add_serve_commands, ask_index
from .serve.compare import ENDPOINT_FLAGS, ORACLE, SETTINGS, SYSTEMS, TEXT_RAG_ENDPOINT, parse_systems
from .serve.endpoint import ENV_KEY, open_endpoint
from .serve.evaluate import run_comparison
from .serve.export import export_zip
from .serve.llama_cpp import available as llama_cpp_available
from .serve.paper import paper_reference
from .serve.report import markdown_table, write_report
from .train import upstream_args
from .train.launch import ALREADY_FINAL, train
from .train.recipe import load_recipe
from .train.trainer import OutOfMemory, TrainingDiverged, TrainingInterrupted

log = logging.getLogger("clara_lite")

RETRIEVING = tuple(name for name in ORDER if get_stage(name).retrieves)
QA_STAGES = tuple(name for name in ORDER if get_stage(name).previous)  # rows of a question and its docs


def _doctor(args) -> int:
    profile = detect_hardware(model_params_b=model_params_b(args.base_model or ClaraConfig().base_model))
    print(f"clara_lite    {__version__} ({source.describe()})")
    print(describe(profile))
    serving = decide_serving(profile.device, llama_cpp=llama_cpp_available())
    weights = "8-bit (q8_0) weights" if serving.backend == "llama.cpp" else dtype_name(serving.dtype)
    flags = f" (CPU flags: {', '.join(sorted(profile.device.cpu_flags)) or 'none of ' + ', '.join(CPU_FLAGS)})" \
        if profile.device.kind == "cpu" else ""
    print(f"serving       {serving.backend}, {weights}: {serving.why}{flags}")
    if profile.device.kind == "cpu":
        print("cpu threads   " + cpu_threads_note(torch.get_num_threads(), os.cpu_count() or 1,
                                                  os.getloadavg()[0], os.environ.get("OMP_WAIT_POLICY")))
    return 0


def _validate(args) -> int:
    config = ClaraConfig(**{k: v for k, v in given(args, ClaraConfig).items() if k != "base_model"})
    tokenizer = tokens = None
    if args.base_model:  # prompts measured in the base model's tokens, with its chat template
        tokenizer = load_tokenizer(args.base_model)
        tokens = add_special_tokens(tokenizer, config)
    report = validate_file(args.file, args.stage, top_k=args.generation_top_k, config=config, tokenizer=tokenizer, tokens=tokens)
    print(report.format())
    return 0 if report.ok else 1


def _eval(args) -> int:
    endpoint = _endpoint(args)  # checked before the model loads: a wrong address fails at once
    model = ClaraModel.from_pretrained(args.model, **({"base_path": args.base_path} if args.base_path else {}))
    if args.systems:
        return _compare(args, model, endpoint)
    rows = read_jsonl(args.data, args.stage)[: args.limit or None]
    result = evaluate_model(model, rows, retrieve=args.stage in RETRIEVING and model.has_retriever,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, top_k=args.top_k)
    predictions = result.pop("predictions")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for row, pred in zip(rows, predictions, strict=True):
                f.write(json.dumps({"question": row.question, "prediction": pred, "answers": list(row.answers)}) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _endpoint(args):
    """The ``text-rag-endpoint`` client when ``--systems`` names it (None otherwise); flags that need each
    other are a clear error."""
    wanted = bool(args.systems) and TEXT_RAG_ENDPOINT in parse_systems(args.systems)
    if wanted and not args.endpoint:
        raise ValueError(f"--systems {TEXT_RAG_ENDPOINT} needs {ENDPOINT_FLAGS}; its key, if it needs one, "
                         f"in {ENV_KEY}")
    if not wanted and (args.endpoint or args.endpoint_model):
        raise ValueError(f"--endpoint and --endpoint-model answer as {TEXT_RAG_ENDPOINT}: add it to --systems")
    return open_endpoint(args.endpoint, args.endpoint_model) if wanted else None


def _compare(args, model, endpoint=None) -> int:
    rows = load_questions(args.data, limit=args.limit, fmt=args.format)
    result, paths = run_comparison(model, rows, parse_systems(args.systems), setting=args.setting, top_k=args.top_k,
                                   pool=read_docs(args.pool) if args.pool else None, report_dir=args.report_dir,
                                   batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                   info={"model": str(args.model), "data": str(args.data)}, endpoint=endpoint)
    paper, notes = {}, []
    if args.paper:
        paper, notes = paper_reference(model.config.base_model, model.config.compr_rate, args.setting,
                                       args.dataset or str(args.data))
        if paper and paths:  # the report's table and JSON carry the column too
            write_report(result, args.report_dir, paper)
    print(markdown_table(result, paper))
    print("".join(f"\n{note}" for note in notes))
    print("\n" + "\n".join(f"{kind:<12} {path}" for kind, path in paths.items()))
    return 0


def _train(args) -> int:
    recipe = load_recipe(args.config) if args.config else None  # every value checked before anything is written
    stage = args.stage or (ALL if recipe else None)
    if stage is None:
        raise ValueError("train needs --stage (stage1, stage2, stage3 or all), or --config RECIPE (then all stages)")
    data_dir = args.data_dir
    if recipe is not None and recipe.example_data is not None and not (args.data or data_dir):
        data_dir = str(write_recipe_data(recipe, Path(args.run_dir))[ORDER[0]].parent)
    try:
        results = train(args.run_dir, stage, data=args.data, data_dir=data_dir,
                        model_options=given(args, ClaraConfig), train_options=given(args, TrainConfig),
                        recipe=recipe, init_from=args.init_from, base_path=args.base_path,
                        take_over=args.take_over)
    except TrainingInterrupted as stop:  # a checkpoint is saved: rerun to resume
        log.warning("%s", stop)
        return stop.exit_status
    except (OutOfMemory, TrainingDiverged) as err:  # the advice, or the last good weights saved
        log.error("%s", err)
        return err.exit_status
    for name, result in results.items():
        done = result if result == ALREADY_FINAL else f"final after {result['steps']} steps"
        print(f"{name}: {done} -> {args.run_dir}/{name}/final")
    return 0


def _demo(args) -> int:
    run_demo(args.run_dir, base=args.base_model)
    return 0


def _export(args) -> int:
    out = export_zip(args.run_dir, stage=args.stage, out=args.out)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _bundle(args) -> int:
    print(source.bundle_note(source.bundle(args.drive)))
    return 0


def _ask(args) -> int:
    question = args.question or args.question_text
    if not question or bool(args.docs) == bool(args.index):
        raise ValueError("ask needs a question and either --docs DOCS or --index IDX")
    if args.index:
        return ask_index(args, question)
    if not args.model:
        raise ValueError("ask --docs needs --model (only an index records its model)")
    kwargs = {"base_path": args.base_path} if args.base_path else {}
    docs = read_docs(args.docs)  # a GPU load follows the plan (dtype, attention, 4-bit when needed)
    model = load(args.model, **kwargs)
    text, retrieved = answer(model, question, docs, top_k=args.top_k, max_new_tokens=args.max_new_tokens)
    print(f"answer: {text}")
    if retrieved is None:
        print(f"(read all {len(docs)} documents)")
    else:
        print("retrieved:")
        for i in retrieved:
            print(f"  [{i}] {docs[i][:80]}")
    return 0


BASE_PATH_HELP = "local copy of the base model (offline machines)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clara-lite", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="on an error, also print its traceback")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("doctor", help="show the hardware profile, its reasons and library versions")
    add_flags(d, ClaraConfig, ("base_model",))  # the base model the plan is for
    d.set_defaults(func=_doctor)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    v = data.add_parser("validate", help="report every bad line of a training JSONL")
    v.add_argument("file")
    v.add_argument("--stage", required=True, choices=ORDER)
    # as training will use them (unset: the fields' defaults); --base also measures each prompt in its tokens
    add_flags(v, ClaraConfig, ("generation_top_k", "doc_max_length", "compr_rate", "max_decoder_length", "base_model"))
    v.set_defaults(func=_validate)
    add_data_commands(data)  # extract, chunk, synthesize, negatives, split, convert, build

    e = sub.add_parser("eval", help="EM / F1 (and Recall@k with a retriever) of a model on a question JSONL")
    e.add_argument("--model", required=True, help="model folder, upstream checkpoint or zip")
    e.add_argument("--data", required=True)
    e.add_argument("--stage", default=ORDER[-1], choices=QA_STAGES, help="the row format of --data")
    e.add_argument("--base-path", default=None, help=BASE_PATH_HELP)
    e.add_argument("--limit", type=int, default=0, help="questions scored; 0 = all")
    e.add_argument("--batch-size", type=int, default=8, help="questions answered at once")
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--top-k", type=int, default=None, help="documents retrieved (default: the model's)")
    e.add_argument("--out", default=None, help="write predictions as JSONL")
    e.add_argument("--systems", default=None,
                   help=f"compare systems on the same questions, comma-separated from {', '.join(SYSTEMS)} "
                   "(clara-zeroed: CLaRa with its memory vectors zeroed; text-rag-endpoint: your chat model behind "
                   "--endpoint reading text-rag's documents); --data may then also be stage1 rows, upstream's eval "
                   "files or a benchmark file (NQ, HotpotQA, MuSiQue, 2Wiki, ...)")
    e.add_argument("--endpoint", default=None, metavar="URL",
                   help=f"{TEXT_RAG_ENDPOINT}: an OpenAI-compatible base URL (Ollama http://localhost:11434/v1, vLLM "
                   f"http://HOST:8000/v1); its key, if any, in {ENV_KEY}")
    e.add_argument("--endpoint-model", default=None, metavar="NAME",
                   help=f"{TEXT_RAG_ENDPOINT}: the model the endpoint answers with (GET /v1/models lists them)")
    e.add_argument("--setting", default=ORACLE, choices=SETTINGS,
                   help="oracle: each question's own documents, gold first; normal: top-k by BM25 from --pool")
    e.add_argument("--pool", default=None, help="normal setting: documents to retrieve from (default: all of --data's)")
    e.add_argument("--format", default=None, help="--data's dataset format when it cannot be told from the fields")
    e.add_argument("--paper", action="store_true",
                   help="with --systems: the paper's figure for the same dataset, setting and compression rate "
                   "beside ours (and what differs: base model, retrieval)")
    e.add_argument("--dataset", default=None, help="--paper: the benchmark --data is (nq, hotpotqa, musique, 2wiki) "
                   "when its file name does not say")
    e.add_argument("--report-dir", default="eval_report",
                   help="with --systems: where comparison.md/.json/.png and predictions.jsonl go")
    e.set_defaults(func=_eval)

    t = sub.add_parser("train", help="train a stage (or all) in a run folder; reruns resume")
    t.add_argument("--stage", default=None, choices=[*ORDER, ALL], help="the stage to train (default with --config: all)")
    t.add_argument("--config", default=None, metavar="RECIPE",
                   help="a recipe file (YAML or JSON: sections model, train, stage1..3, example_data; the configs' own "
                   "keys) or a shipped recipe's name (demo, real_text); flags given here override it")
    t.add_argument("--run-dir", required=True, help="run folder (on Drive in Colab)")
    t.add_argument("--data", default=None, help="JSONL for this stage (remembered in run.json)")
    t.add_argument("--data-dir", default=None, help="folder with " + ", ".join(get_stage(s).data_file for s in ORDER))
    t.add_argument("--base-path", default=None, help=BASE_PATH_HELP)
    t.add_argument("--init-from", default=None, help="start the stage from this saved model (dir or zip)")
    t.add_argument("--take-over", action="store_true",
                   help="take the run folder's lock from a trainer on another machine whose heartbeat is still fresh "
                   "(its runtime is gone: a Colab disconnect); never from a process alive on this machine; "
                   "recorded in run.json")
    add_flags(t.add_argument_group("model (fixed in run.json by the first stage)"), ClaraConfig)
    add_flags(t.add_argument_group("training (unset: the hardware plan / the stage's default)"), TrainConfig)
    t.set_defaults(func=_train)

    m = sub.add_parser("demo", help="the whole pipeline on the embedded model, on CPU, in minutes")
    m.add_argument("--run-dir", default="runs/demo")
    add_flags(m, ClaraConfig, ("base_model",))  # default: the demo recipe's
    m.set_defaults(func=_demo)

    x = sub.add_parser("export", help="zip a run's final model (adapters, config, tokenizer, model card)")
    x.add_argument("--run-dir", required=True)
    x.add_argument("--stage", default=None, choices=ORDER, help="default: the newest final stage")
    x.add_argument("--out", default=None, help="zip to write (default: exports/<run>-<stage>.zip beside runs/)")
    x.set_defaults(func=_export)

    b = sub.add_parser("bundle", help="write a Drive-ready folder: the six notebooks, this checkout's wheel beside "
                       f"them and {source.START_HERE} (drag it into Google Drive as MyDrive/clara_lite)")
    b.add_argument("--drive", default="bundle/clara_lite", metavar="DIR",
                   help="the folder to write (default: bundle/clara_lite; a Google Drive for desktop folder works)")
    b.set_defaults(func=_bundle)

    a = sub.add_parser("ask", help="answer a question from documents or an index with a saved model (zip or folder)")
    a.add_argument("question_text", nargs="?", default=None, metavar="QUESTION")
    a.add_argument("--model", default=None, help="exported zip, model folder or Hugging Face id "
                   "(org/name[/subfolder], e.g. apple/CLaRa-7B-E2E/compression-16); with --index, default: the "
                   "model the index recorded")
    a.add_argument("--question", default=None, help="the question (or give it as the argument)")
    a.add_argument("--docs", default=None, help="JSONL ({\"doc\": ...} lines or training rows) or a folder of .txt/.md")
    a.add_argument("--index", default=None, help="an index folder (clara-lite index build): compressed once")
    a.add_argument("--top-k", type=int, default=None, help="documents retrieved (models with a retriever)")
    add_index_options(a, model_option=False)
    a.add_argument("--max-new-tokens", type=int, default=64)
    a.set_defaults(func=_ask)
    add_serve_commands(sub)  # index build|add|remove|info|merge, chat, serve
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and upstream_args.is_upstream(argv[1:]):  # apple/ml-clara's train_sft flags
        try:
            ours, lines = upstream_args.translate(argv[1:])
        except upstream_args.UpstreamArgsError as err:
            print(f"clara-lite train: {err}", file=sys.stderr)
            return exit_status(err)
        print("upstream CLaRa flags, as clara-lite's (README: \"Coming from apple/ml-clara\"):\n  "
              + "\n  ".join(lines) + "\n  = clara-lite train " + " ".join(ours), file=sys.stderr)
        argv = ["train", *ours]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "peft", "bitsandbytes", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return args.func(args)
    except Exception as err:  # every error one message, no traceback (--debug: with it); the status by kind
        log.error("%s", error_message(err), exc_info=args.debug)
        return exit_status(err)


# what a user can do about an error that carries no advice of its own, by the library that raised it
ADVICE = {
    "SafetensorError": "a .safetensors file is damaged or not one: rebuild or download it again "
                       "(`clara-lite index info --index DIR --verify` names a damaged index file)",
    "BadZipFile": "the zip is damaged or truncated: download it again",
    "RecursionError": "the input is nested too deeply to read: check the file",
    "UnicodeError": "the text holds characters that cannot be encoded (an unpaired surrogate?): fix the input",
}


def error_message(err: BaseException) -> str:
    """The one line the CLI prints for ``err``: clara_lite's errors and the built-in kinds its code raises
    with a message as they are; anything else as its type, its text and what to do."""
    text = redact(str(err)) or "(no message)"
    if isinstance(err, ClaraError):
        return text
    kind = next((ADVICE[t.__name__] for t in type(err).__mro__ if t.__name__ in ADVICE), None)
    if kind is not None:
        return f"{type(err).__name__}: {text}. What to do: {kind}; --debug shows where it happened"
    if isinstance(err, ValueError | OSError):
        return text
    return (f"{type(err).__name__}: {text}. This is a clara-lite bug or an input it does not check: rerun with "
            "--debug for the traceback and report it with the command")


if __name__ == "__main__":
    sys.exit(main())
