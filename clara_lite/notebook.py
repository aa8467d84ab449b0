"""What the Colab notebooks do, as functions: cells only call these and show the result.

One function per notebook step: choose and check the data (01), train a stage (02-04), load,
ask, evaluate and export (05). The run's settings come from :mod:`clara_lite.notebook_settings`
(re-exported here, so cells need one import). ``drive`` is the folder from
:func:`clara_lite.colab.drive_root`.

>>> settings = load_settings(drive)                       # doctest: +SKIP
>>> final = train_stage(drive, settings, "stage1")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from .notebook_settings import (
    NOTEBOOKS,
    STAGES,
    Settings,
    SettingsError,
    choose_settings,
    current_run,
    load_settings,
    run_dir,
    save_settings,
    saved_settings,
    settings_form,
    show_plan,
)

__all__ = [  # the settings helpers are re-exported: a cell needs only `from clara_lite import notebook as nb`
    "NOTEBOOKS", "STAGES", "Settings", "SettingsError", "choose_settings", "current_run", "load_settings", "run_dir",
    "save_settings", "saved_settings", "settings_form", "show_plan",
    "ask", "check_data", "data_folder", "default_questions", "document_pool", "evaluate_heldout",
    "export_model", "load_model", "prepare_data", "show_loss_curve", "train_stage",
]

log = logging.getLogger(__name__)

DATA_DIR = "data"
EXAMPLE_DATA = "data/example"
DATA_FILES = {"stage1": "stage1", "stage2": "stage2", "stage3": "stage3", "heldout": "stage3"}  # file -> format


# ----------------------------------------------------------------------- data


def _on_drive(drive: Path, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(drive) / path


def _relative(drive: Path, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(drive).resolve()))
    except ValueError:
        return str(path.resolve())


def data_folder(drive: Path, settings: Settings) -> Path:
    if not settings.data_dir:
        raise SettingsError(f"No data chosen for run {settings.run_name!r}: run {NOTEBOOKS['data']}.ipynb first")
    return _on_drive(drive, settings.data_dir)


def prepare_data(drive: Path, settings: Settings, source: str = "example", folder: str = "") -> Settings | None:
    """01_data: pick the run's data folder and remember it in run.json.

    ``source``: ``"example"`` (the shipped example data, written to <drive>/data/example),
    ``"jsonl"`` (``folder`` on Drive holding stage1.jsonl, stage2.jsonl, stage3.jsonl, optionally
    heldout.jsonl) or ``"raw"`` (documents to convert with ``clara-lite data extract``).
    """
    if source == "example":
        from .examples import write_example_data

        target = Path(drive) / EXAMPLE_DATA
        if not all((target / f"{name}.jsonl").is_file() for name in DATA_FILES):
            write_example_data(target)
            print(f"Wrote the example data to {target}")
    elif source == "jsonl":
        target = _on_drive(drive, folder or DATA_DIR)
        if not (target / "stage1.jsonl").is_file():
            raise FileNotFoundError(f"{target / 'stage1.jsonl'} not found: put stage1.jsonl, stage2.jsonl, "
                                    "stage3.jsonl (and optionally heldout.jsonl) into that Drive folder")
    elif source == "raw":
        target = _build_from_raw(drive, settings, folder)
        if target is None:
            return None
    else:
        raise SettingsError(f"DATA_SOURCE must be 'example', 'jsonl' or 'raw', got {source!r}")
    settings = save_settings(drive, replace(settings, data_dir=_relative(drive, target)))
    print(f"Run {settings.run_name!r} trains on {target}")
    return settings


def _build_from_raw(drive: Path, settings: Settings, folder: str) -> Path | None:
    """Documents in ``folder`` -> <drive>/data/<run>-raw/{stage1,stage2,stage3,heldout}.jsonl (reruns resume)."""
    from .pipeline.build import DATA_PACKAGES, build_for_run, missing_modules

    if not folder:
        print("Set DATA_FOLDER to a Drive folder of documents (PDF, DOCX, PPTX, HTML, Markdown, TXT). They are "
              "converted by `clara-lite data build` (extract, chunk, synthesize questions, split; step by step: "
              "`!clara-lite data extract --help`). Questions come from an OpenAI-compatible endpoint when "
              "CLARA_LLM_BASE_URL, CLARA_LLM_MODEL and CLARA_LLM_API_KEY are set, else from the base model.")
        return None
    if missing_modules():
        print(f"Raw documents need {', '.join(missing_modules())}: run `!pip install -q {' '.join(DATA_PACKAGES)}`")
        return None
    target = Path(drive) / DATA_DIR / f"{settings.run_name}-raw"
    report = build_for_run(_on_drive(drive, folder), target, base=settings.base_model,
                           doc_max_length=settings.doc_max_length, top_k=settings.top_k)
    extract, split = report["extract"], report["split"]
    print(f"{extract['extractor']}: {extract['documents']} documents, {report['chunks']['text']} passages, "
          f"{split['questions']} questions ({split['heldout_questions']} held out)")
    for skipped in extract["skipped"]:
        print(f"  skipped {skipped['source']}: {skipped['reason']}")
    return target


def _short(value, width: int = 90):
    if isinstance(value, str):
        return value if len(value) <= width else value[: width - 1] + "…"
    if isinstance(value, list | tuple):
        return [_short(v, width) for v in value]
    return value


def check_data(drive: Path, settings: Settings) -> dict:
    """Validate every data file of the run; print counts, problems and one sample row each.

    Raises :class:`clara_lite.data.DataError` when a file has bad rows (fix them before training).
    """
    from .data import DataError, validate_file

    folder, reports = data_folder(drive, settings), {}
    for name, stage in DATA_FILES.items():
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            needed = "optional, used by 05_inference" if name == "heldout" else f"needed by {NOTEBOOKS[name]}"
            print(f"{name}.jsonl: missing ({needed})\n")
            continue
        reports[name] = report = validate_file(path, stage, top_k=None if stage == "stage1" else settings.top_k)
        print(report.format())
        if report.ok:  # the first row as the file has it
            with open(path, encoding="utf-8-sig") as f:
                sample = json.loads(next(line for line in f if line.strip()))
            print("  sample: " + json.dumps({k: _short(v) for k, v in sample.items()}, ensure_ascii=False))
        print()
    bad = [name for name, report in reports.items() if not report.ok]
    if bad:
        raise DataError(f"{', '.join(bad)}: bad rows (listed above); fix them, then run this cell again")
    return reports


# ----------------------------------------------------------------------- training


def show_loss_curve(stage_dir: Path) -> None:
    from IPython.display import Image, display

    png = Path(stage_dir) / "loss.png"
    if png.is_file():
        display(Image(filename=str(png)))


def train_stage(drive: Path, settings: Settings, stage: str) -> Path | None:
    """02-04: train ``stage`` of the run; resume from its newest checkpoint; show the loss curve.

    Returns the final checkpoint folder, or None when stopped (the checkpoint is kept: rerun to go on).
    """
    from .run import Run, train
    from .training import TrainingInterrupted

    root = run_dir(drive, settings.run_name)
    run = Run(root)
    status = run.stage_status(stage)
    previous = STAGES[STAGES.index(stage) - 1] if stage != "stage1" else None
    if previous and status == "not started" and (before := run.stage_status(previous)) != "final":
        raise SettingsError(f"{stage} starts from {previous}/final, which is not there yet ({previous}: "
                            f"{before}): run {NOTEBOOKS[previous]}.ipynb first")
    if status == "final":
        print(f"{stage} is already final.")
    else:
        steps = settings.steps(stage) or f"{settings.epochs:g} epoch(s) of"
        what = f"resuming from its {status}" if status.startswith("checkpoint") else "starting"
        print(f"{stage}: {what}; {steps} steps, checkpoints every {settings.save_minutes:g} min"
              + (f" and every {settings.save_steps} steps" if settings.save_steps else "")
              + f" into {root / stage / 'checkpoints'}")
        try:
            train(root, stage, data=str(data_folder(drive, settings) / f"{stage}.jsonl"),
                  model_options=settings.model_options(), train_options=settings.train_options(stage))
        except TrainingInterrupted as stop:
            print(stop)
            show_loss_curve(root / stage)
            return None
    show_loss_curve(root / stage)
    final = run.final_dir(stage)
    print(f"{stage} final checkpoint: {final}")
    return final


# ----------------------------------------------------------------------- inference


def load_model(drive: Path, settings: Settings):
    """05: the newest final stage of the run, on the GPU when there is one."""
    from .hardware import detect_hardware
    from .modeling import ClaraModel
    from .run import Run

    final = Run(run_dir(drive, settings.run_name)).newest_final()
    if final is None:
        raise SettingsError(f"Run {settings.run_name!r} has no final stage yet: run {NOTEBOOKS['stage1']}.ipynb")
    kwargs = {}
    profile = detect_hardware()
    if profile.device.kind == "cuda":
        kwargs = {"device_map": profile.device.torch_device, "dtype": profile.dtype}
    model = ClaraModel.from_pretrained(final, **kwargs)
    print(f"Loaded {final} (trained: {', '.join(model.config.trained_stages)}; adapters: "
          f"{', '.join(model.adapter_names)})")
    return model


def _heldout(drive: Path, settings: Settings) -> list:
    from .data import read_jsonl

    path = data_folder(drive, settings) / "heldout.jsonl"
    return read_jsonl(path, "stage3") if path.is_file() else []


def document_pool(drive: Path, settings: Settings, pool: str = "") -> list[str]:
    """Documents to ask over: ``pool`` (a JSONL or folder of .txt on Drive) or the held-out rows' docs."""
    if pool:
        from .ask import read_docs

        return read_docs(_on_drive(drive, pool))
    docs = list(dict.fromkeys(d for row in _heldout(drive, settings) for d in row.docs))
    if not docs:
        raise SettingsError("No heldout.jsonl in the data folder: set POOL to a JSONL or a folder of .txt files")
    return docs


def ask(model, questions: list[str], pool: list[str], settings: Settings, max_new_tokens: int = 32) -> list[dict]:
    """Answer each question over the pool: retrieve top-k first (stage3), else read the whole pool."""
    from .ask import MAX_DOCS_WITHOUT_RETRIEVER  # a model without a query reasoner reads every doc at once

    if not questions:
        print("No questions: set QUESTIONS, or add heldout.jsonl to the data folder")
        return []
    if "query_reasoner" in model.adapter_names:
        answers, idx = model.generate_from_questions(questions, [pool] * len(questions), max_new_tokens,
                                                     top_k=settings.top_k)
        picked = idx.tolist()
    else:
        pool = pool[:MAX_DOCS_WITHOUT_RETRIEVER]
        print(f"(no retriever before stage3: the model reads all {len(pool)} documents)")
        answers = model.generate_from_text(questions, [pool] * len(questions), max_new_tokens)
        picked = [None] * len(questions)
    results = []
    for question, answer, docs in zip(questions, answers, picked, strict=True):
        print(f"Q: {question}\nA: {answer.strip()}")
        for rank, i in enumerate(docs or []):
            print(f"   retrieved #{rank + 1}: [{i}] {_short(pool[i])}")
        print()
        results.append({"question": question, "answer": answer, "retrieved": docs})
    return results


def default_questions(drive: Path, settings: Settings, n: int = 3) -> list[str]:
    return [row.question for row in _heldout(drive, settings)[:n]]


def evaluate_heldout(drive: Path, settings: Settings, model, *, limit: int = 0, max_new_tokens: int = 32) -> dict | None:
    """EM / F1 (and Recall@1 with a retriever) on heldout.jsonl; written to <run>/heldout_eval.json."""
    from .evaluation import evaluate_model

    rows = _heldout(drive, settings)[: limit or None]
    if not rows:
        print("No heldout.jsonl in the data folder: evaluation skipped")
        return None
    retrieve = "query_reasoner" in model.adapter_names
    result = evaluate_model(model, rows, retrieve=retrieve, max_new_tokens=max_new_tokens,
                            top_k=settings.top_k if retrieve else None)
    predictions = result.pop("predictions")
    scores = f"EM {result['em']:.2f}   F1 {result['f1']:.2f}"
    if "recall_at_1" in result:
        scores += f"   Recall@1 {result['recall_at_1']:.2f}"
    print(f"held-out ({result['count']} questions): {scores}")
    for row, pred in list(zip(rows, predictions, strict=True))[:3]:
        print(f"  {_short(row.question, 60)!r}: {pred.strip()!r} (gold {row.answers[0]!r})")
    (run_dir(drive, settings.run_name) / "heldout_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def export_model(drive: Path, settings: Settings) -> Path | None:
    """Zip the newest final stage to <drive>/exports/ and, in Colab, offer it as a download."""
    from .colab import download
    from .export import export_zip

    path = Path(export_zip(run_dir(drive, settings.run_name)))
    print(f"Exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if not download(path):
        print("(outside Colab: no browser download; the zip is at the path above)")
    return path
