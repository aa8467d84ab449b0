"""What the Colab notebooks do, as one object: a run in a Drive folder, with its settings.

``Workspace(drive, settings)`` holds the paths, the settings and the run; each notebook step is a
method: choose and check the data (01), train a stage (02-04), load, ask, evaluate and export (05).
``drive`` is the folder from :func:`clara_lite.notebook.colab.drive_root`.

For example::

    ws = Workspace.open(drive)                 # the run set up last in 00_setup
    final = ws.train("stage1")
"""

from __future__ import annotations

import importlib.util
import json
import re
import zipfile
from dataclasses import replace
from pathlib import Path

from ..core.config import ClaraConfig
from ..core.hardware import probe_device
from ..core.layout import EXPORTS_DIR, KIND_CHECKPOINT, RunLayout, step_folders, verify, write_json
from ..model.data import DataError, read_jsonl, validate_file
from ..model.evaluation import evaluate_model
from ..model.modeling import ClaraModel
from ..model.stages import ORDER, STAGES, get_stage
from ..pipeline.build import DATA_PACKAGES, build_for_run, missing_modules
from ..pipeline.convert import convert
from ..pipeline.examples import write_example_data
from ..pipeline.fetch import fetch
from ..pipeline.questions import load_questions
from ..pipeline.sources import detect_format, load_records
from ..pipeline.split import write_stage_files
from ..serve.ask import answer_many, read_docs
from ..serve.compare import CLARA, CLOSED_BOOK, NORMAL, ORACLE, TEXT_RAG, TEXT_RAG_ENDPOINT
from ..serve.endpoint import open_endpoint
from ..serve.evaluate import run_comparison
from ..serve.export import export_zip
from ..serve.fingerprint import fingerprint
from ..serve.index import ClaraIndex
from ..serve.paper import paper_reference
from ..serve.report import markdown_table
from ..train.launch import train
from ..train.lock import RunLocked
from ..train.recipe import Recipe, load_recipe
from ..train.run import Run
from ..train.trainer import OutOfMemory, TrainingInterrupted
from . import colab
from .settings import NOTEBOOKS, Settings, SettingsError, load_settings, run_dir, save_settings

DATA_DIR = "data"
EXAMPLE_DATA = "data/example"
DOWNLOADS = "downloads"  # <drive>/downloads/<run>: what a DATA_LINK fetched
SOURCES = ("example", "jsonl", "raw", "dataset", "link")
HELDOUT = "heldout"
DATA_FILES = {**{s: s for s in ORDER}, HELDOUT: ORDER[-1]}  # file -> the stage that reads it


def _short(value, width: int = 90):
    if isinstance(value, str):
        return value if len(value) <= width else value[: width - 1] + "…"
    if isinstance(value, list | tuple):
        return [_short(v, width) for v in value]
    return value


class Workspace:
    """A run of the notebook suite: ``<drive>/runs/<run_name>`` and its settings."""

    def __init__(self, drive: str | Path, settings: Settings):
        self.drive = Path(drive)
        self.settings = settings
        self.root = run_dir(self.drive, settings.run_name)
        self.layout = RunLayout(self.root)
        self.stopped = ""  # why training stopped in this runtime (the release is then cancelled)

    @classmethod
    def open(cls, drive: str | Path, run_name: str = "") -> Workspace:
        """The run ``run_name`` (default: the one set up last), its settings printed."""
        return cls(drive, load_settings(Path(drive), run_name))

    @property
    def run(self) -> Run:
        return Run(self.root)  # read afresh: the runner writes run.json

    def on_drive(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.drive / path

    def _relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.drive.resolve()))
        except ValueError:
            return str(path.resolve())

    # ------------------------------------------------------------------- data (01)

    @property
    def data_folder(self) -> Path:
        if not self.settings.data_dir:
            raise SettingsError(f"No data chosen for run {self.settings.run_name!r}: run {NOTEBOOKS['data']}.ipynb "
                                "first")
        return self.on_drive(self.settings.data_dir)

    def prepare_data(self, source: str = "example", folder: str = "", *, dataset: str = "", split: str = "",
                     limit: int = 0, long_answer: bool = False, link: str = "") -> Settings | None:
        """01_data: pick the run's data folder and remember it in run.json; None when an input is missing
        (what to set is printed).

        ``source``: ``"example"`` (the shipped example data, written to <drive>/data/example),
        ``"jsonl"`` (``folder`` on Drive holding stage1.jsonl, stage2.jsonl, stage3.jsonl, optionally
        heldout.jsonl), ``"raw"`` (documents to convert with ``clara-lite data build``), ``"dataset"``
        (a Hugging Face Hub id, short name, or a Drive folder/file of one, converted like ``clara-lite
        data convert --dataset``; ``split``, ``limit``, ``long_answer`` for PubMedQA) or ``"link"`` (a
        Drive share link or URL, fetched like ``clara-lite data fetch``, then trained on, converted or
        built from according to what it holds).
        """
        if source not in SOURCES:
            raise SettingsError(f"DATA_SOURCE must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
        if source == "dataset":
            if not dataset:
                print("Set DATASET to a Hugging Face dataset (a Hub id, or pubmedqa, medqa, musique, hotpotqa, nq, "
                      "squad) or a Drive folder or file of one; DATASET_LIMIT keeps the first N records.")
                return None
            target = self._convert_dataset(dataset, split=split, limit=limit, long_answer=long_answer)
            return self.prepare_data("jsonl", str(target))
        if source == "link":
            return self._from_link(link, split=split, limit=limit, long_answer=long_answer)
        if source == "example":
            target = self.drive / EXAMPLE_DATA
            if not all((target / f"{name}.jsonl").is_file() for name in DATA_FILES):
                write_example_data(target, n_candidates=max(4, self._top_k()))  # every question gets top_k candidates
                print(f"Wrote the example data to {target}")
        elif source == "jsonl":
            target = self.on_drive(folder or DATA_DIR)
            first = STAGES[ORDER[0]].data_file
            if not (target / first).is_file():
                raise FileNotFoundError(f"{target / first} not found: put "
                                        f"{', '.join(s.data_file for s in STAGES.values())} (and optionally "
                                        f"{HELDOUT}.jsonl) into that Drive folder")
        else:  # raw
            target = self._build_from_raw(folder)
            if target is None:
                return None
        self.settings = save_settings(self.drive, replace(self.settings, data_dir=self._relative(target)))
        print(f"Run {self.settings.run_name!r} trains on {target}")
        return self.settings

    def _top_k(self) -> int:
        return self.settings.generation_top_k or ClaraConfig().generation_top_k

    def _convert_dataset(self, dataset: str, *, split: str = "", limit: int = 0, long_answer: bool = False) -> Path:
        """``dataset`` (a Drive folder or file, else a Hub id or short name) -> <drive>/data/<run>-<name>/."""
        local = self.on_drive(dataset)
        records, description = load_records(local if local.exists() else dataset, split=split or None, limit=limit)
        fmt = detect_format(records[0])
        options = {"answer": "long"} if long_answer and fmt == "pubmedqa" else {}
        name = re.sub(r"[^\w.-]+", "_", Path(str(dataset)).name or str(dataset)).strip("_") or "dataset"
        target = self.drive / DATA_DIR / f"{self.settings.run_name}-{name}"
        _, stats = write_stage_files(convert(records, fmt, **options), target, k=max(4, self._top_k()), heldout=0.1)
        print(f"{description}: {len(records)} records ({fmt}{', long answers' if options else ''}) -> "
              f"{stats['train_questions']} training and {stats['heldout_questions']} held-out questions over "
              f"{stats['documents']} documents")
        return target

    def _from_link(self, link: str, **dataset_options) -> Settings | None:
        if not link:
            print("Set DATA_LINK to a Drive share link (a zip or folder of documents, a dataset file, or a folder "
                  "with stage1/2/3.jsonl) or an http(s) URL.")
            return None
        fetched = fetch(link, self.drive / DOWNLOADS / self.settings.run_name)
        print(f"fetched {fetched.kind}: {fetched.path}")
        if fetched.kind == "stage files":
            folder = fetched.path if fetched.path.is_dir() else fetched.path.parent
            first = next(folder.rglob(STAGES[ORDER[0]].data_file))
            return self.prepare_data("jsonl", str(first.parent))
        if fetched.kind == "dataset":
            return self.prepare_data("jsonl", str(self._convert_dataset(str(fetched.path), **dataset_options)))
        return self.prepare_data("raw", str(fetched.path))

    def _build_from_raw(self, folder: str) -> Path | None:
        """Documents in ``folder`` -> <drive>/data/<run>-raw/{stage1,stage2,stage3,heldout}.jsonl (reruns resume)."""
        if not folder:
            print("Set DATA_FOLDER to a Drive folder of documents (PDF, DOCX, PPTX, HTML, Markdown, TXT). They are "
                  "converted by `clara-lite data build` (extract, chunk, synthesize questions, split; step by step: "
                  "`!clara-lite data extract --help`). Questions come from an OpenAI-compatible endpoint when "
                  "CLARA_LLM_BASE_URL, CLARA_LLM_MODEL and CLARA_LLM_API_KEY are set, else from the base model.")
            return None
        if missing_modules():
            print(f"Raw documents need {', '.join(missing_modules())}: run `!pip install -q {' '.join(DATA_PACKAGES)}`")
            return None
        model = ClaraConfig(**self.settings.model_options())
        target = self.drive / DATA_DIR / f"{self.settings.run_name}-raw"
        report = build_for_run(self.on_drive(folder), target, base=model.base_model,
                               doc_max_length=model.doc_max_length, top_k=model.generation_top_k)
        extract, split = report["extract"], report["split"]
        print(f"{extract['extractor']}: {extract['documents']} documents, {report['chunks']['text']} passages, "
              f"{split['questions']} questions ({split['heldout_questions']} held out)")
        for skipped in extract["skipped"]:
            print(f"  skipped {skipped['source']}: {skipped['reason']}")
        return target

    def check_data(self) -> dict:
        """Validate every data file of the run; print counts, problems and one sample row each.

        Raises :class:`clara_lite.model.data.DataError` when a file has bad rows (fix them before training).
        """
        folder, reports, top_k = self.data_folder, {}, self._top_k()
        for name, stage_name in DATA_FILES.items():
            stage = get_stage(stage_name)
            path = folder / f"{name}.jsonl"
            if not path.is_file():
                needed = f"optional, used by {NOTEBOOKS['inference']}" if name == HELDOUT else f"needed by {NOTEBOOKS[stage.name]}"
                print(f"{name}.jsonl: missing ({needed})\n")
                continue
            reports[name] = report = validate_file(path, stage, top_k=None if stage.exact_docs else top_k)
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

    # ------------------------------------------------------------------- training (02-04)

    def show_loss_curve(self, stage: str) -> None:
        from IPython.display import Image, display

        png = self.layout.loss_plot(stage)
        if png.is_file():
            display(Image(filename=str(png)))

    def train(self, stage: str, then_next: bool = False, take_over: bool = False) -> Path | None:
        """02-04: train ``stage`` of the run; resume from its newest checkpoint; show the loss curve.
        ``then_next``: go on with the following stages in this runtime (no new runtime, no reinstall).
        ``take_over`` (``TAKE_OVER = True``): take the run's lock from a runtime that is gone but whose heartbeat
        is still fresh (a reconnect within 10 minutes of a disconnect); recorded in run.json.

        Returns the (last) final checkpoint folder, or None when stopped (the checkpoint is kept: rerun to go on)
        or locked by another runtime (what to do is printed).
        """
        final = self._train_one(stage, take_over)
        if not then_next or final is None:
            return final
        for later in ORDER[ORDER.index(get_stage(stage).name) + 1:]:
            print(f"\n--- continuing with {later} in this runtime (CONTINUE_STAGES) ---")
            final = self._train_one(later)
            if final is None:
                return None
        return final

    def _train_one(self, stage: str, take_over: bool = False) -> Path | None:
        stage = get_stage(stage)
        run = self.run
        status = run.stage_status(stage.name)
        if not status.started:
            run.start_dir(stage)  # raises, naming the notebook to run first, unless the previous stage is final
        if status.final:
            print(f"{stage.name} is already final.")
        else:
            settings = self.settings
            recipe = self.stage_recipe(stage.name)
            options = {**recipe.train_options(stage.name), **settings.train_options(stage.name)}
            steps = options.get("max_steps") or f"{options.get('epochs') or 1:g} epoch(s) of"
            what = f"resuming from its {status}" if status.started else "starting"
            print(f"{stage.name}: {what}; recipe {recipe.path.stem}; {steps} steps into "
                  f"{self.layout.checkpoints(stage.name)}")
            try:
                # the model's settings are run.json's (saved once by 00_setup): only training options travel
                train(self.root, stage.name, data=str(self.data_folder / stage.data_file),
                      train_options=settings.train_options(stage.name), recipe=recipe, take_over=take_over)
            except RunLocked as locked:  # a reconnect finds the old runtime's fresh heartbeat: say what to do
                print(lock_advice(locked))
                self.stopped = "another runtime holds the run"
                return None
            except TrainingInterrupted as stop:
                print(stop)
                self.stopped = f"{stage.name} was stopped before its final checkpoint"
                self.show_loss_curve(stage.name)
                return None
            except OutOfMemory as oom:  # what to change, as 00_setup's parameters, not a traceback
                print(oom.notebook_advice)
                self.stopped = f"{stage.name} ran out of GPU memory"
                return None
        self.show_loss_curve(stage.name)
        final = self.layout.final(stage.name)
        print(f"{stage.name} final checkpoint: {final}")
        return final

    # ------------------------------------------------------------------- inference (05)

    def stage_recipe(self, stage: str) -> Recipe:
        """The recipe ``stage`` trains with (RECIPE in 00_setup; 'auto': by the hardware it starts on)."""
        entry = self.run.record.stages.get(stage)
        started = Path(entry.recipe["path"]).stem if entry is not None and entry.recipe else None
        return load_recipe(self.settings.recipe_name(probe_device(), started))

    def load_model(self) -> ClaraModel:
        """05: the newest final stage of the run, on the GPU when there is one."""
        final = self.run.newest_final()
        if final is None:
            raise SettingsError(f"Run {self.settings.run_name!r} has no final stage yet: run "
                                f"{NOTEBOOKS[ORDER[0]]}.ipynb")
        model = ClaraModel.from_pretrained(final)  # on a GPU: its plan's dtype, attention, 4-bit when needed
        print(f"Loaded {final} (trained: {', '.join(model.config.trained_stages)}; adapters: "
              f"{', '.join(model.adapter_names)}; attention {model.attn_implementation})")
        return model

    def heldout(self) -> list:
        path = self.data_folder / f"{HELDOUT}.jsonl"
        return read_jsonl(path, DATA_FILES[HELDOUT]) if path.is_file() else []

    def document_pool(self, pool: str = "") -> list[str]:
        """Documents to ask over: ``pool`` (a JSONL or folder of .txt on Drive) or the held-out rows' docs."""
        if pool:
            return read_docs(self.on_drive(pool))
        docs = list(dict.fromkeys(d for row in self.heldout() for d in row.docs))
        if not docs:
            raise SettingsError(f"No {HELDOUT}.jsonl in the data folder: set POOL to a JSONL or a folder of .txt files")
        return docs

    def default_questions(self, n: int = 3) -> list[str]:
        return [row.question for row in self.heldout()[:n]]

    def ask(self, model, questions: list[str], pool: list[str], max_new_tokens: int = 32) -> list[dict]:
        """Answer each question over the pool: retrieve top-k first (stage3), else read the whole pool."""
        if not questions:
            print(f"No questions: set QUESTIONS, or add {HELDOUT}.jsonl to the data folder")
            return []
        if not model.has_retriever:
            print(f"(no retriever before stage3: the model reads all {len(pool)} documents)")
        answers = answer_many(model, questions, pool, top_k=self.settings.generation_top_k,
                              max_new_tokens=max_new_tokens)
        for one in answers:
            print(f"Q: {one.question}\nA: {one.text.strip()}")
            for rank, i in enumerate(one.retrieved or []):
                print(f"   retrieved #{rank + 1}: [{i}] {_short(pool[i])}")
            print()
        return [{"question": a.question, "answer": a.text, "retrieved": a.retrieved} for a in answers]

    def build_index(self, model, pool: str = "") -> ClaraIndex:
        """05: the index of ``pool`` (a folder of documents or a JSONL on Drive; "" = the held-out documents)
        for ``model``, built once into ``<run>/indexes/`` on Drive and reused on the next runtime (a build cut
        by a disconnect resumes). A retrained model has another fingerprint, so it gets an index of its own."""
        name = re.sub(r"[^\w.-]+", "_", Path(pool).stem if pool else HELDOUT).strip("_") or "documents"
        path = self.layout.index(f"{name}-{fingerprint(model)['id']}")
        source = self.on_drive(pool) if pool else self.document_pool()
        try:
            index = ClaraIndex.load(path, model)
            print(f"Reusing the index {path}: {len(index.chunks)} chunks")
            readable = sorted({s["needs"] for s in index.info()["skipped"]
                               if s.get("needs") and importlib.util.find_spec(s["needs"]) is not None})
            if readable and pool:  # skipped for want of a reader that is installed now: add them
                print(f"Adding the documents skipped before ({', '.join(readable)} is installed now)")
                index.add(source)
        except (FileNotFoundError, ValueError):
            print(f"Building the index {path} (once; saved on Drive)")
            index = ClaraIndex.build(path, model, source)
        info = index.info()
        print(f"{info['chunks']} chunks from {info['sources']} documents, {info['bytes_per_chunk']:.0f} bytes of memory "
              f"vectors per chunk; retriever: {info['retriever']}")
        for skipped in info["skipped"]:
            print(f"  skipped {skipped['source']}: {skipped['reason']}")
        return index

    def ask_index(self, index: ClaraIndex, questions: list[str], max_new_tokens: int = 32) -> list[dict]:
        """05: answer each question from the index (only the question is encoded) and show its sources."""
        if not questions:
            print(f"No questions: set QUESTIONS, or add {HELDOUT}.jsonl to the data folder")
            return []
        print(f"({index.decoder.how})")  # a merged copy only when the GPU has room for it
        answers = index.ask_many(questions, self.settings.generation_top_k, max_new_tokens=max_new_tokens)
        for one in answers:
            print(f"Q: {one.question}\nA: {one.text}")
            for rank, hit in enumerate(one.hits, start=1):
                c = hit.chunk
                where = c.source + (f" p.{c.page}" if c.page is not None else "") + f" [{c.start}:{c.end}]"
                print(f"   retrieved #{rank} ({hit.score:.3f}) {where}: {_short(c.text)}")
            print()
        return [a.to_dict() for a in answers]

    def chat_page(self, index: ClaraIndex, share: bool = False, max_new_tokens: int = 64):
        """05: a chat page over ``index`` shown inline (Colab too): the answer streams in, its sources under it,
        the conversation kept. ``share=True`` also makes a public gradio.live link (with a warning: anyone who
        has it can ask the index). Without Gradio installed, says how to get it and returns None."""
        if importlib.util.find_spec("gradio") is None:
            print("The chat page needs Gradio (Colab has it): pip install gradio")
            return None
        from ..serve.ui import launch_inline

        page = launch_inline(index, share=share, default_k=self.settings.generation_top_k,
                             max_new_tokens=max_new_tokens)
        print(f"Chat page on {page.local_url}" + (f" and, public, {page.share_url}" if share and page.share_url else ""))
        return page

    def evaluate_heldout(self, model, *, limit: int = 0, max_new_tokens: int = 32) -> dict | None:
        """EM / F1 (and Recall@1 with a retriever) on heldout.jsonl; written to <run>/heldout_eval.json."""
        rows = self.heldout()[: limit or None]
        if not rows:
            print(f"No {HELDOUT}.jsonl in the data folder: evaluation skipped")
            return None
        retrieve = model.has_retriever
        result = evaluate_model(model, rows, retrieve=retrieve, max_new_tokens=max_new_tokens,
                                top_k=self.settings.generation_top_k if retrieve else None)
        predictions = result.pop("predictions")
        scores = f"EM {result['em']:.2f}   F1 {result['f1']:.2f}"
        if "recall_at_1" in result:
            scores += f"   Recall@1 {result['recall_at_1']:.2f}"
        print(f"held-out ({result['count']} questions): {scores}")
        for row, pred in list(zip(rows, predictions, strict=True))[:3]:
            print(f"  {_short(row.question, 60)!r}: {pred.strip()!r} (gold {row.answers[0]!r})")
        write_json(self.layout.heldout_eval, result)
        return result

    def compare(self, model, systems=(CLOSED_BOOK, TEXT_RAG, CLARA), *, data: str = "", setting: str = ORACLE,
                limit: int = 0, max_new_tokens: int = 32, paper: dict | None = None, name: str = HELDOUT,
                endpoint: str = "", endpoint_model: str = ""):
        """05: the same questions (heldout.jsonl, or ``data`` on Drive: any file ``clara-lite eval --systems``
        reads) answered by each system; the table and the bar chart shown inline, the report written to
        <run>/benchmarks/<name>-<setting>/. ``endpoint`` / ``endpoint_model``: the RAG you run today (any
        OpenAI-compatible server; its key in ``CLARA_ENDPOINT_API_KEY``) answers the same documents as
        ``text-rag-endpoint``, added to ``systems``."""
        client = None
        if endpoint:
            client = open_endpoint(endpoint, endpoint_model)
            systems = [*systems, *([] if TEXT_RAG_ENDPOINT in systems else [TEXT_RAG_ENDPOINT])]
        if data:  # a file or folder on Drive, else a Hugging Face dataset name
            rows = load_questions(self.on_drive(data) if self.on_drive(data).exists() else data, limit=limit)
        else:
            rows = self.heldout()[: limit or None]
        if not rows:
            print(f"No {HELDOUT}.jsonl in the data folder: set DATA to a question file")
            return None
        result, paths = run_comparison(model, rows, systems, setting=setting, max_new_tokens=max_new_tokens,
                                       report_dir=self.layout.benchmark(f"{name}-{setting}"), paper=paper,
                                       info={"run": self.settings.run_name, "data": data or HELDOUT}, endpoint=client)
        _show(markdown_table(result, paper), paths["chart"])
        return result

    def benchmark(self, data: str, *, model=None, checkpoint: str = "", dataset: str = "", limit: int = 500,
                  settings=(ORACLE, NORMAL), systems=(CLARA,), max_new_tokens: int = 32) -> dict:
        """05: score this run's model (or ``checkpoint``: a model folder or zip on Drive, e.g. an official
        CLaRa-7B checkpoint) on the first ``limit`` questions of a benchmark file (upstream's eval files, or NQ,
        HotpotQA, MuSiQue, 2Wiki as their datasets ship), oracle and normal, with the paper's score for the
        same base model and compression rate beside it. ``dataset`` names the benchmark when the file name
        does not. Returns ``{setting: Comparison}``."""
        if model is None:
            model = ClaraModel.from_pretrained(self.on_drive(checkpoint)) if checkpoint else self.load_model()
        name = re.sub(r"[^\w.-]+", "_", Path(data).stem)
        results = {}
        for setting in settings:
            paper, notes = paper_reference(model.config.base_model, model.config.compr_rate, setting, dataset or data)
            results[setting] = self.compare(model, systems, data=data, setting=setting, limit=limit,
                                            max_new_tokens=max_new_tokens, paper=paper, name=name)
            print("\n".join(notes))  # the same notes as `clara-lite eval --paper`
        return results

    def export_model(self, download: bool = True) -> Path:
        """Zip the newest final stage to <drive>/exports/ and, in Colab, offer it as a browser download."""
        path = Path(export_zip(self.root))
        print(f"Exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
        if download and not colab.offer_download(path):
            print("(outside Colab: no browser download; the zip is at the path above)")
        return path


    # ------------------------------------------------------------------- the end of a notebook

    def saved_problems(self) -> list[str]:
        """What on Drive is not complete: each stage's newest checkpoint (or its final) against its manifest,
        this run's exported zips (read through). [] when all is in order."""
        problems = []
        for name in ORDER:
            final = self.layout.final(name)
            steps = step_folders(self.layout.checkpoints(name))
            newest = final if final.is_dir() else (steps[-1][1] if steps else None)
            if newest is not None and (why := verify(newest, KIND_CHECKPOINT)):
                problems.append(f"{self._relative(newest)}: {why}")
        for path in sorted((self.drive / EXPORTS_DIR).glob(f"{self.settings.run_name}-*.zip")):
            try:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
            except (OSError, zipfile.BadZipFile) as err:
                bad = str(err)
            if bad:
                problems.append(f"{self._relative(path)} does not read back ({bad})")
        return problems

    def release(self, release: bool = True) -> bool:
        """The last cell: give the runtime back once what is on Drive is complete and flushed
        (:func:`clara_lite.notebook.colab.release_runtime`); not when training was stopped in this runtime."""
        return colab.release_runtime(release, check=self.saved_problems, stopped=self.stopped)


def lock_advice(locked: RunLocked) -> str:
    """A locked run in notebook terms: which runtime holds it, since when, when it goes stale, what to set."""
    holder = locked.holder
    if holder is None:
        return f"{locked}"
    stage = f" training {holder['stage']}" if holder.get("stage") else ""
    beat = f"its last sign of life (heartbeat) was {_minutes(locked.heartbeat_age)} ago"
    if locked.alive_here:
        return (f"This run is in use by another notebook in this same runtime (process {holder.get('pid')}){stage}, "
                f"since {holder.get('since')}; {beat}. Stop that notebook first (its stop button, or Runtime > "
                "Interrupt execution), then run this cell again. TAKE_OVER cannot take a run from a process that "
                "is still running here.")
    when = "any moment" if locked.stale_in <= 0 else f"in {_minutes(locked.stale_in)}"
    return (f"This run is in use by another Colab runtime (host {holder.get('host')!r}, process {holder.get('pid')})"
            f"{stage}, since {holder.get('since')}; {beat}, so its lock counts as stale {when} and Run all then "
            "continues by itself.\n"
            "- If that runtime is gone (you are reconnecting after a disconnect, or closed its tab): set "
            "TAKE_OVER = True in the parameters cell and Run all again; training continues from the newest checkpoint "
            "on Drive, and the take-over is recorded in run.json.\n"
            "- If it still runs (another tab or browser): leave it, or stop it there first. Two runtimes training one "
            "run overwrite each other's checkpoints.")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _show(markdown: str, chart: Path) -> None:
    """A table and a chart inline in a notebook; the table as text elsewhere."""
    try:
        from IPython.display import Image, Markdown, display
    except ModuleNotFoundError:
        print(markdown)
        return
    display(Markdown(markdown))
    display(Image(filename=str(chart)))
