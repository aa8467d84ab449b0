"""The notebook suite's source of truth: the cells of every notebook, as data.

    python notebooks/build.py           writes notebooks/*.ipynb (outputs empty)
    python notebooks/build.py --check   exits 1 when a committed notebook differs from this file

Edit the cells here, never in the .ipynb files. Output is deterministic: cell ids are
``<notebook>-<index>``, JSON keys sorted. Cells stay thin: they call ``clara_lite.notebook``
(``Workspace``: what a notebook does with a run) and ``clara_lite.notebook.colab`` (installs,
Drive); the logic lives there. The one exception is the first cell, tagged ``bootstrap``: it gets
clara_lite into a fresh runtime, before there is a package to call. Where it gets it from (and the
badges' links) is :mod:`clara_lite.core.source`, the one place that says so.
A cell tagged ``parameters`` holds each notebook's inputs, so headless runners (papermill, the
tests) can override them by adding a cell after it.

    python notebooks/build.py           also rewrites the README's block of Colab badges
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clara_lite
from clara_lite import __version__  # noqa: E402
from clara_lite.core import source  # noqa: E402
from clara_lite.model.stages import STAGES  # noqa: E402
from clara_lite.notebook.colab import COLAB_ROOT, DRIVE_ENV, MOUNT_POINT  # noqa: E402

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
README_BEGIN, README_END = "<!-- colab badges: written by notebooks/build.py -->", "<!-- end of colab badges -->"
GPU_FREE = ("00_setup", "01_data")  # ask Colab for no GPU: they train nothing


def md(text: str) -> dict:
    return {"cell_type": "markdown", "source": text.strip()}


def code(text: str, *tags: str) -> dict:
    return {"cell_type": "code", "source": text.strip(), "tags": list(tags)}


# Every notebook starts with these two cells. A fresh Colab runtime has nothing, so the first one gets
# clara_lite itself (the only logic a cell holds: clara_lite cannot install itself before it exists).
DRIVE_DEFAULT = f"{MOUNT_POINT}/{COLAB_ROOT}"
# the package index only once its name is ours (source.INDEX_NAME_OURS), and then with its dependencies
INDEX = source.index_requirement() if source.INDEX_NAME_OURS else ""
ORDER = "[*wheels, *git, index]" if INDEX else "[*wheels, *git]"
# git: GitHub's repository only once it is ours (source.GIT_REPO_OURS); else only a CLARA_GIT the user names
GIT_DEFAULT = source.git_url() if source.GIT_REPO_OURS else ""
NO_DEPS = '*(["--no-deps"] if source != index else [])' if INDEX else '"--no-deps"'
BOOTSTRAP = code(f'''
# Colab: mount Drive, then install clara_lite {__version__} from the first source that works: the wheel beside
# this notebook in MyDrive/clara_lite/ (or its {source.WHEELS_DIR}/; `clara-lite bundle` on your computer), git tag {source.tag()}{"" if GIT_DEFAULT else " of $" + source.GIT_ENV}{", the package index" if INDEX else ""}.
# A no-op when this runtime has it already, and outside Colab when it is installed.
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

CLARA_SOURCE = os.environ.get("{source.SOURCE_ENV}", "")  # "" = that order; or a .whl path or a pip requirement
if "google.colab" in sys.modules and not os.environ.get("{DRIVE_ENV}"):
    from google.colab import drive

    drive.mount("{MOUNT_POINT}")
DRIVE = Path(os.environ.get("{DRIVE_ENV}", "{DRIVE_DEFAULT}"))
ready = "{__version__}" in [d.version for d in importlib.metadata.distributions(name="{source.DIST}")]
git = [f"git+{{url}}@{source.tag()}" for url in [os.environ.get("{source.GIT_ENV}", "{GIT_DEFAULT}")] if url]
wheels = [str(w) for d in (DRIVE, DRIVE / "{source.WHEELS_DIR}") for w in sorted(d.glob("{source.wheel_glob()}"))][:1]
{f'index = "{INDEX}"{chr(10)}' if INDEX else ""}for source in [] if ready else [CLARA_SOURCE] if CLARA_SOURCE else {ORDER}:
    print(f"pip install {{source}}", flush=True)  # its dependencies: the next cell (never torch)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", {NO_DEPS}, source], capture_output=True, text=True)
    if pip.returncode == 0:
        break
    print(f"{{pip.stdout}}{{pip.stderr}}-> not from {{source}}", flush=True)
else:
    if not ready:
        raise RuntimeError("clara_lite {__version__} could not be installed (pip's messages above). Next: on your computer, in a clara_lite checkout (a zip of the repository is enough), run `make bundle` and put the folder bundle/clara_lite into Google Drive as MyDrive/clara_lite (its START_HERE.md says how), then run this cell again; or set CLARA_SOURCE to a pip requirement you can reach, e.g. git+https://github.com/<you>/clara_lite.git@{source.tag()}")
''', "bootstrap")

SETUP = code('''
# Colab: install what is missing, a line per step (never torch); then Drive. A no-op the second time in
# a runtime. Elsewhere nothing is installed and "Drive" is $CLARA_DRIVE (default ./drive).
from clara_lite import notebook as nb
from clara_lite.notebook import colab

env = colab.setup_environment()
print(env)
''')
BOOT = (BOOTSTRAP, SETUP)

RUN_PARAMETER = code('''
RUN_NAME = ""  # "" = the run set up last in 00_setup (<drive>/current_run.txt)
CONTINUE_STAGES = False  # True: train the next stages too, in this runtime (no new runtime, no reinstall)
RELEASE_RUNTIME = False  # True: give the GPU back at the end (everything is on Drive)
TAKE_OVER = False  # True: take the run over from a runtime that is gone (reconnecting within 10 min of a disconnect)
''', "parameters")

RELEASE = (
    md("## Done: release the GPU\n\nColab counts the time a GPU runtime is held, used or not. Everything "
       "is on Drive: *Runtime > Disconnect and delete runtime* (or `RELEASE_RUNTIME = True` above) gives it back; "
       "the next notebook continues from Drive in any runtime. With `RELEASE_RUNTIME = True` the newest "
       "checkpoints and the exported zip are checked and Drive is flushed first; the stop button (or a stopped "
       "training) keeps the runtime."),
    code("ws.release(RELEASE_RUNTIME)"),
)

LOAD_SETTINGS = code("ws = nb.Workspace.open(env.drive, RUN_NAME)")

TIMES_NOTE = ("Times are rough estimates from FLOP counts and typical Colab throughput, not measurements; "
              "the progress bar's s/it is the real figure.")


def intro(name: str, title: str, body: str) -> dict:
    return md(f"# {title}\n\n{source.badge(name)}\n\n{body.strip()}")


def trains(stage: str) -> str:
    """What a stage trains, from the stage registry (so the intro texts stay right)."""
    return " and ".join(f"`{a}`" for a in STAGES[stage].trainable) + " adapters"


def stage_notebook(name: str, stage: str, title: str, what: str, needs: str, times: str) -> list[dict]:
    later = [s for s in STAGES if list(STAGES).index(s) > list(STAGES).index(stage)]
    then = (f"With `CONTINUE_STAGES = True` it goes on with {' and '.join(later)} in this runtime (no new "
            "runtime, no reinstall)." if later else "")
    return [
        intro(name, title, f"""
{what}

**Needs:** {needs}

**Takes:** {times}

{TIMES_NOTE} Training resumes by itself: after a disconnect, open this notebook again and *Run all*;
it continues from the newest checkpoint on Drive (checkpoints every `save_minutes`, set in 00_setup),
on whichever GPU the new runtime has: precision, 4-bit, attention and micro-batch are planned again
for it (a change that alters numerics is printed as a warning), the rows per step stay the same.
Back within 10 minutes of a disconnect, the old runtime's lock may still look alive: the cell says
which runtime holds it and until when; `TAKE_OVER = True` continues at once. The stop button saves a
checkpoint before stopping. {then}
"""),
        *BOOT,
        md("## Run\n\nThe run's settings come from its `run.json` (saved by 00_setup), not from this notebook."),
        RUN_PARAMETER,
        LOAD_SETTINGS,
        md(f"## Train {stage}\n\nThis session's plan, progress bar, log lines and the loss curve below; the "
           "last line says where the final checkpoint is."),
        code(f'final = ws.train("{stage}", then_next=CONTINUE_STAGES, take_over=TAKE_OVER)'),
        *RELEASE,
    ]


NOTEBOOKS: dict[str, list[dict]] = {
    "00_setup": [
        intro("00_setup", "clara_lite 0 · Set up", """
Prepares the runtime and the run: mounts Google Drive (first: Colab asks for permission once),
installs clara_lite and what Colab lacks (never torch), a line per step, asks for the run's settings
and shows this runtime's hardware plan for them (each training notebook plans again for the GPU it gets).

**Needs:** a Colab runtime of any kind: this notebook and 01_data train nothing, so they ask Colab for
no GPU (keep your GPU time for 02–05). A Google account for Drive. clara_lite comes from the wheel beside this notebook in
`MyDrive/clara_lite/` (`make bundle` or `clara-lite bundle --drive DIR` on your computer writes that
folder: the six notebooks, the wheel, START_HERE.md), else from the git tag of this notebook's version. Or a local Jupyter with clara_lite
installed, where "Drive" is the folder `$CLARA_DRIVE` (default `./drive`) and nothing is installed.

**Takes:** 1–3 min in a fresh runtime, CPU, T4 or A100 alike (pip installs); seconds when run again in
the same runtime (the setup is then a no-op). The settings are the same for smollm2-135m and
qwen2.5-1.5b; only the plan differs (qwen2.5-1.5b: ~5.5 GB on a T4 in fp16 with gradient
checkpointing, no 4-bit needed). Each training session plans again for the GPU it gets.

Then: `01_data` → `02_stage1` (a GPU runtime) → `03_stage2` → `04_stage3` → `05_inference`; each notebook
opens in a runtime of its own, so its first cells install again (1–3 min);
in 02 `CONTINUE_STAGES = True` trains all three stages in one runtime.
"""),
        md("## 1. Environment"),
        *BOOT,
        md("""
## 2. Run settings

Fill in the form and click **Save settings**: they go into `<drive>/runs/<run>/run.json`, and every
later notebook (and every new runtime) reads them from there. An existing run's settings are shown,
not asked again; for different settings choose a new run name. Only its hardware settings (4-bit,
micro-batch, accumulation, gradient checkpointing, attention) may change: in the form shown for it, or
in the parameters below. Without widgets (a headless run)
set `USE_FORM = False`: the values below are saved as they are.
"""),
        code('''
# None = clara_lite's own default for that setting (the form shows it; `clara-lite train --help` lists them)
RUN_NAME = ""  # "" = continue the run set up last; a new name starts a new run ("my-run" if none yet)
BASE_MODEL = None  # e.g. "qwen2.5-1.5b", any registry name, Hugging Face id or folder (None: smollm2-135m)
COMPR_RATE = None  # document tokens per memory vector
DOC_MAX_LENGTH = None  # document tokens kept per passage
TOP_K = None  # documents retrieved per question
# "auto": each stage trains with the shipped recipe for the hardware it starts on (clara_lite/recipes/colab_cpu,
# colab_t4, colab_a100: how many steps, how often to save); or a recipe's name, or a recipe file on Drive
RECIPE = "auto"
STAGE1_STEPS = None  # optimizer steps per stage (None: the recipe's); 0 = train EPOCHS passes over the data
STAGE2_STEPS = None
STAGE3_STEPS = None
EPOCHS = None
SAVE_MINUTES = None  # checkpoint to Drive this often
# not in the form; the hardware ones (QUANTIZATION ... ATTENTION) may change for an existing run: each training
# session plans them again (the next one uses what is saved here)
LORA_R = None
MAX_DECODER_LENGTH = None  # decoder prompt + answer tokens kept
QUANTIZATION = "auto"  # "auto": each session's plan (4-bit only when the model would not fit); "4bit", "8bit", "none"
SAVE_STEPS = None  # also checkpoint every N steps
LOG_STEPS = None
MICRO_BATCH_SIZE = None  # None: from the hardware plan
GRAD_ACCUM_STEPS = None
GRADIENT_CHECKPOINTING = None  # None: from the hardware plan; True: less memory, slower steps
ATTENTION = None  # None: from the hardware plan; "sdpa", "eager" or "flash_attention_2"
LR = None  # None: each stage's own (1e-4 for stage1/2, 5e-6 for stage3)
USE_FORM = True  # False: save the values above without asking
''', "parameters"),
        code('''
settings = nb.choose_settings(env.drive, nb.Settings(
    run_name=RUN_NAME, base_model=BASE_MODEL, compr_rate=COMPR_RATE, doc_max_length=DOC_MAX_LENGTH,
    generation_top_k=TOP_K, recipe=RECIPE, stage1_steps=STAGE1_STEPS, stage2_steps=STAGE2_STEPS,
    stage3_steps=STAGE3_STEPS, epochs=EPOCHS, save_minutes=SAVE_MINUTES, lora_r=LORA_R, max_decoder_length=MAX_DECODER_LENGTH,
    quantization=QUANTIZATION, save_steps=SAVE_STEPS, log_steps=LOG_STEPS, micro_batch_size=MICRO_BATCH_SIZE,
    grad_accum_steps=GRAD_ACCUM_STEPS, gradient_checkpointing=GRADIENT_CHECKPOINTING, attention=ATTENTION, lr=LR,
), interactive=USE_FORM)
'''),
        md("## 3. Hardware profile and plan\n\nDevice, precision, attention, 4-bit or not, batch and expected "
           "memory, each with its reason, for this runtime. Training plans again on the GPU it runs on."),
        code("nb.show_plan(settings)"),
        md("Next: **01_data**. Colab opens each notebook in a runtime of its own: its first two cells install "
           "clara_lite again there (1–3 min); the run's settings come from Drive."),
    ],
    "01_data": [
        intro("01_data", "clara_lite 1 · Data", """
Chooses the run's training data and checks it before any training: the shipped example data
(24 short factual documents with questions), JSONL files you already have on Drive, raw
documents (PDF, DOCX, PPTX, HTML, Markdown, TXT, images) turned into training files by
`clara-lite data build`, a public QA dataset (PubMedQA, MedQA, MuSiQue, HotpotQA, 2Wiki, NQ, SQuAD or
any Hugging Face dataset of their shapes) converted by `clara-lite data convert --dataset`, or a Drive
share link to any of these. Shows counts, problems (file:line) and a sample row.

**Needs:** 00_setup run once (the run's settings). For your own data: a folder on Drive with
`stage1.jsonl`, `stage2.jsonl`, `stage3.jsonl` and optionally `heldout.jsonl` (for 05_inference),
or a folder of documents. Questions about documents come from an OpenAI-compatible endpoint when
`CLARA_LLM_BASE_URL`, `CLARA_LLM_MODEL` and `CLARA_LLM_API_KEY` are set (OpenAI, DashScope/Qwen,
DeepSeek, Ollama, vLLM), else from the run's base model.

**Takes:** seconds on a T4 or an A100 alike, whether the run uses smollm2-135m or qwen2.5-1.5b (no
model is loaded here; validation is plain Python: a few seconds per 100k rows). Raw documents take
two generator calls per passage (about 9 s per passage with smollm2-135m on one CPU thread; an
endpoint or a GPU is faster); rerunning the cell resumes where it stopped.
"""),
        *BOOT,
        md("## Data source"),
        code('''
RUN_NAME = ""  # "" = the run set up last in 00_setup
DATA_SOURCE = "example"  # "example", "jsonl" (files on Drive), "raw" (documents on Drive), "dataset" or "link"
DATA_FOLDER = ""  # relative to the Drive root; "jsonl": the files' folder (default "data"); "raw": the documents
DATASET = ""  # "dataset": Hub id or pubmedqa, medqa, musique, hotpotqa, nq, squad; or a Drive folder/file
DATASET_SPLIT = ""  # "" = train (nq: validation)
DATASET_LIMIT = 0  # 0 = every record; large Hub datasets are streamed, so a limit reads only that many
LONG_ANSWER = False  # PubMedQA: train on long_answer (as seed 001 does) instead of yes/no/maybe
DATA_LINK = ""  # "link": Drive share link or URL of a documents zip/folder, a dataset file or stage files
''', "parameters"),
        LOAD_SETTINGS,
        code("""
settings = ws.prepare_data(DATA_SOURCE, DATA_FOLDER, dataset=DATASET, split=DATASET_SPLIT, limit=DATASET_LIMIT,
                           long_answer=LONG_ANSWER, link=DATA_LINK)
"""),
        md("## Validate\n\nEvery line of every file is checked; a bad row stops here, not hours into training."),
        code("reports = ws.check_data()"),
        md("Next: **02_stage1**."),
    ],
    "02_stage1": stage_notebook(
        "02_stage1", "stage1", "clara_lite 2 · Stage 1: compression pretraining",
        "Trains the `encoder` adapter to compress each document into a few memory vectors and the `decoder` "
        "adapter to answer and paraphrase from them.",
        "00_setup and 01_data run once.",
        "with the default settings on the example data (40 steps): ~1 min on a T4 and under a minute on an "
        "A100 for smollm2-135m; ~4 min (T4) / ~1–2 min (A100) for qwen2.5-1.5b, plus its ~3 GB download "
        "the first time. For real data at document length 256 and 16 rows per step, per 1,000 steps: "
        "smollm2-135m ~15 min (T4) / ~4 min (A100); qwen2.5-1.5b ~2–3 h (T4) / ~30 min (A100).",
    ),
    "03_stage2": stage_notebook(
        "03_stage2", "stage2", "clara_lite 3 · Stage 2: instruction tuning",
'Starts from `stage1/final` and tunes the ' + trains("stage2") + " to answer questions from the "
        "compressed candidate documents: each row compresses all its candidates, and both adapters learn from "
        "the answer.",
        "02_stage1 finished (its `final` checkpoint on Drive).",
        "with the default settings on the example data (40 steps): ~1–2 min on a T4 and ~1 min on an A100 "
        "for smollm2-135m; ~6 min (T4) / ~2 min (A100) for qwen2.5-1.5b. Each row compresses all its "
        "candidate documents, so a step costs ~3x a stage1 step: per 1,000 steps at document length 256 "
        "and 16 rows per step, smollm2-135m ~45 min (T4) / ~10 min (A100); qwen2.5-1.5b ~6–8 h (T4) / "
        "~1.5 h (A100).",
    ),
    "04_stage3": stage_notebook(
        "04_stage3", "stage3", "clara_lite 4 · Stage 3: retrieval + generation end to end",
"Starts from `stage2/final`, adds the `query_reasoner` adapter and trains the " + trains("stage3")
        + ": retrieval (top-k over the compressed candidates) and generation together; the `encoder` stays "
        "as stage2 left it.",
        "03_stage2 finished (its `final` checkpoint on Drive).",
        "with the default settings on the example data (30 steps): ~1–2 min on a T4 and ~1 min on an A100 "
        "for smollm2-135m; ~5 min (T4) / ~2 min (A100) for qwen2.5-1.5b. Per 1,000 steps at document "
        "length 256 and 16 rows per step, like stage2: smollm2-135m ~45 min (T4) / ~10 min (A100); "
        "qwen2.5-1.5b ~6–8 h (T4) / ~1.5 h (A100).",
    ),
    "05_inference": [
        intro("05_inference", "clara_lite 5 · Ask, evaluate, export", """
Loads the run's newest final stage, compresses a pool of documents once into an index on Drive (reused
on the next runtime), answers questions from it showing the sources each answer came from, scores the
held-out questions (EM, F1, Recall@1), and exports the model as a zip to `<drive>/exports/` (a browser
download too with `DOWNLOAD_ZIP = True`). The last section uses an official CLaRa-7B release instead, no
training needed: on a free T4 it loads in 4-bit.

**Needs:** at least 02_stage1 finished; stage3 for retrieval. `heldout.jsonl` in the data folder for
the evaluation and the default questions (the example data has one). The official models only need
a GPU runtime and, for their gated base model, an `HF_TOKEN` in Colab's Secrets (see that section).

**Takes:** on a T4: ~30 s for smollm2-135m, ~1–2 min for qwen2.5-1.5b (mostly loading; the download
the first time in a runtime); an A100 about half that. The zip holds the adapters only: ~60 MB
(smollm2-135m) to ~220 MB (qwen2.5-1.5b) at LoRA rank 16.
"""),
        *BOOT,
        md("## Run and inputs"),
        code('''
RUN_NAME = ""  # "" = the run set up last in 00_setup
QUESTIONS = []  # your questions; [] = the first held-out questions
POOL = ""  # documents to ask over: a folder on Drive (PDF, DOCX, PPTX, HTML, MD, TXT) or a JSONL; "" = the held-out documents
MAX_NEW_TOKENS = 32
EVAL_LIMIT = 0  # held-out questions scored; 0 = all
DOWNLOAD_ZIP = False  # True: also offer the exported zip as a browser download
OFFICIAL_MODEL = ""  # last section: "base", "instruct" or "e2e" (apple/CLaRa-7B-…); "" skips it
COMPRESSION = 16  # the official models' compression: 16 or 128
RELEASE_RUNTIME = False  # True: give the GPU back at the end (everything is on Drive)
CHAT_PAGE = True  # a chat page over the index, inline below its cell
SHARE_CHAT = False  # True: also a public gradio.live link (anyone who has it can ask your documents)
SYSTEMS = ["closed-book", "text-rag", "clara"]  # also "clara-zeroed": CLaRa with its memory vectors zeroed
ENDPOINT = ""  # your current RAG: an OpenAI-compatible base URL this runtime can reach (vLLM, Ollama, OpenAI), answering the same documents beside CLaRa; its key in the CLARA_ENDPOINT_API_KEY environment variable
ENDPOINT_MODEL = ""  # the model it answers with (GET /v1/models lists them)
BENCHMARK_FILE = ""  # a benchmark on Drive (upstream's eval files, NQ/HotpotQA/MuSiQue/2Wiki); "" = skip
BENCHMARK = ""  # nq, hotpotqa, musique or 2wiki when the file name does not say (for the paper's number)
BENCHMARK_LIMIT = 500  # questions of BENCHMARK_FILE scored
CHECKPOINT = ""  # score this model instead of the run's (a folder or zip on Drive, e.g. an official CLaRa-7B)
''', "parameters"),
        LOAD_SETTINGS,
        md("## Load the newest final stage"),
        code("model = ws.load_model()"),
        md("## Index the documents (once)\n\nEach document is cut into chunks of the model's document length "
           "(nothing is truncated) and compressed into memory vectors, saved under `<run>/indexes/` on Drive. "
           "Rerunning reuses the index; a build cut by a disconnect resumes where it stopped."),
        code("index = ws.build_index(model, POOL)"),
        md("## Ask\n\nOnly the question is encoded; the retrieved chunks' memory vectors come from the index."),
        code("answers = ws.ask_index(index, QUESTIONS or ws.default_questions(), MAX_NEW_TOKENS)"),
        md("## Chat with the documents\n\nA chat page (Gradio) over the same index: the answer streams in with "
           "its sources (file, page, passage) under it, and a follow-up question is retrieved with the earlier "
           "ones. `SHARE_CHAT = True` makes a public link: anyone who has it can ask your documents."),
        code("page = ws.chat_page(index, share=SHARE_CHAT, max_new_tokens=MAX_NEW_TOKENS) if CHAT_PAGE else None"),
        md("## Held-out evaluation"),
        code("scores = ws.evaluate_heldout(model, limit=EVAL_LIMIT, max_new_tokens=MAX_NEW_TOKENS)"),
        md("""
## Does it read? CLaRa beside closed-book and text RAG

The same held-out questions answered by the base model alone (closed-book), the base model reading the
documents' text (text RAG, no adapter active) and CLaRa from the compressed documents: EM, F1, cover-EM,
prompt tokens and seconds per question, as a table and a chart (also in `<run>/benchmarks/`).
"""),
        code("comparison = ws.compare(model, SYSTEMS, limit=EVAL_LIMIT, max_new_tokens=MAX_NEW_TOKENS,\n"
             "                        endpoint=ENDPOINT, endpoint_model=ENDPOINT_MODEL)"),
        md("""
## A benchmark slice, beside the paper

Set `BENCHMARK_FILE` to score this run's model, or an official CLaRa checkpoint (`CHECKPOINT`), on the first
`BENCHMARK_LIMIT` questions of a benchmark in the oracle (gold documents given) and normal (top-k by BM25
from the file's documents) settings, with the paper's score for the same base model and compression rate
beside it. Rough estimate for 500 questions with a 7B model: minutes on an A100, up to an hour on a T4.
"""),
        code("""
if BENCHMARK_FILE:
    bench = ws.benchmark(BENCHMARK_FILE, model=None if CHECKPOINT else model, checkpoint=CHECKPOINT,
                         dataset=BENCHMARK, limit=BENCHMARK_LIMIT, max_new_tokens=MAX_NEW_TOKENS)
"""),
        md("## Export"),
        code("zip_path = ws.export_model(download=DOWNLOAD_ZIP)"),
        md("""
## Use an official CLaRa-7B model

Apple's releases, no training needed: `apple/CLaRa-7B-Base` (compression pretraining), `-Instruct`
(instruction tuned) or `-E2E` (with the retriever), each at compression 16 or 128. Set `OFFICIAL_MODEL`
and `COMPRESSION` in the parameters above. Only the checkpoint's files are downloaded (a few hundred
MB), then its base model `mistralai/Mistral-7B-Instruct-v0.2` (~14 GB, gated: accept its license on
huggingface.co, then add your token as `HF_TOKEN` in Colab's Secrets, the key icon, with notebook access).
On a T4 the plan loads it in 4-bit (~5 GB of GPU memory). Questions and documents: `QUESTIONS` and
`POOL` above (a folder of PDF, DOCX, PPTX, HTML, Markdown or text files, or a JSONL), else a few of the
example documents. It needs a GPU runtime (T4 or better): without one it says so and loads nothing. No run
of your own? Run the first two cells and the *Run and inputs* cell (its parameters), then this section
(select its first cell, *Runtime > Run cell and below*).
"""),
        code("""
official = nb.official_model(OFFICIAL_MODEL, COMPRESSION)  # None while OFFICIAL_MODEL = ""
official_answers = nb.ask_official(official, QUESTIONS, POOL, env.drive, MAX_NEW_TOKENS)
"""),
        *RELEASE,
    ],
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` with empty outputs and stable cell ids."""
    cells = []
    for i, cell in enumerate(NOTEBOOKS[name]):
        if cell["cell_type"] == "markdown":
            node = nbformat.v4.new_markdown_cell(cell["source"])
        else:
            node = nbformat.v4.new_code_cell(cell["source"])
            if cell["tags"]:
                node.metadata["tags"] = cell["tags"]
        node.id = f"{name}-{i:02d}"
        cells.append(node)
    gpu = {} if name in GPU_FREE else {"accelerator": "GPU"}  # Colab opens it on the runtime type asked for
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        **gpu,
        "colab": {"provenance": [], **({} if name in GPU_FREE else {"gpuType": "T4"}), "toc_visible": True},
    })
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def path(name: str) -> Path:
    return HERE / f"{name}.ipynb"


def readme_text() -> str:
    """README.md with its block of Colab badges (between the two markers) written from clara_lite.core.source."""
    text = README.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{README} lost its markers {README_BEGIN!r} / {README_END!r}: put them back")
    rows = "\n".join(f"| `{name}` | {source.badge(name)} |" for name in NOTEBOOKS)
    block = (f"{README_BEGIN}\n| notebook (clara_lite {__version__}, git tag `{source.tag()}`) | open |\n"
             f"|---|---|\n{rows}\n{README_END}")
    head, rest = text.split(README_BEGIN, 1)
    return head + block + rest.split(README_END, 1)[1]


def stale() -> list[str]:
    """Notebooks (and the README's badges) that differ from what this source generates (or are missing)."""
    names = [name for name in NOTEBOOKS
             if not path(name).is_file() or path(name).read_text(encoding="utf-8") != render(name)]
    return names + (["README.md"] if README.read_text(encoding="utf-8") != readme_text() else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook differs from this source")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            where = README if name == "README.md" else path(name)
            print(f"{where} differs from notebooks/build.py: run python notebooks/build.py")
        return 1 if names else 0
    for name in NOTEBOOKS:
        path(name).write_text(render(name), encoding="utf-8")
        print(f"wrote {path(name)}")
    README.write_text(readme_text(), encoding="utf-8")
    print(f"wrote the Colab badges of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
