"""The notebook suite's source of truth: the cells of every notebook, as data.

    python notebooks/build.py           writes notebooks/*.ipynb (outputs empty)
    python notebooks/build.py --check   exits 1 when a committed notebook differs from this file

Edit the cells here, never in the .ipynb files. Output is deterministic: cell ids are
``<notebook>-<index>``, JSON keys sorted. Cells stay thin: they call ``clara_lite.notebook``
(``Workspace``: what a notebook does with a run) and ``clara_lite.notebook.colab`` (installs,
Drive); the logic lives there.
A cell tagged ``parameters`` holds each notebook's inputs, so headless runners (papermill, the
tests) can override them by adding a cell after it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
ORG = "clara-lite"  # placeholder GitHub org of the badge links and the clone URL
COLAB_URL = f"https://colab.research.google.com/github/{ORG}/clara_lite/blob/main/notebooks/{{name}}.ipynb"
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def md(text: str) -> dict:
    return {"cell_type": "markdown", "source": text.strip()}


def code(text: str, *tags: str) -> dict:
    return {"cell_type": "code", "source": text.strip(), "tags": list(tags)}


# Every notebook starts with these two cells. A fresh Colab runtime has nothing, so the first one
# clones the repository (the only logic a cell holds: clara_lite cannot install itself before it exists).
CLONE = code(f'''
# In Colab: fetch clara_lite into this runtime. Elsewhere: the installed clara_lite is used.
import os
import subprocess
import sys

REPO_URL = "https://github.com/{ORG}/clara_lite"
REPO_DIR = "/content/clara_lite"
if "google.colab" in sys.modules:
    if not os.path.isdir(REPO_DIR):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, REPO_DIR], check=True)
    if REPO_DIR not in sys.path:
        sys.path.insert(0, REPO_DIR)
''')

SETUP = code('''
# In Colab: install what is missing (never torch), mount Drive.
# Elsewhere: nothing is installed and "Drive" is $CLARA_DRIVE (default ./drive).
from clara_lite import notebook as nb
from clara_lite.notebook.colab import setup_environment

env = setup_environment(REPO_DIR)
print(env)
''')
BOOT = (CLONE, SETUP)

RUN_PARAMETER = code('''
RUN_NAME = ""  # "" = the run set up last in 00_setup (<drive>/current_run.txt)
''', "parameters")

LOAD_SETTINGS = code("ws = nb.Workspace.open(env.drive, RUN_NAME)")

TIMES_NOTE = ("Times are rough estimates from FLOP counts and typical Colab throughput, not measurements; "
              "the progress bar's s/it is the real figure.")


def intro(name: str, title: str, body: str) -> dict:
    badge = BADGE.format(url=COLAB_URL.format(name=name))
    return md(f"# {title}\n\n{badge}\n\n{body.strip()}")


def stage_notebook(name: str, stage: str, title: str, what: str, needs: str, times: str) -> list[dict]:
    return [
        intro(name, title, f"""
{what}

**Needs:** {needs}

**Takes:** {times}

{TIMES_NOTE} Training resumes by itself: after a disconnect, open this notebook again and *Run all*;
it continues from the newest checkpoint on Drive (checkpoints every `save_minutes`, set in 00_setup).
The stop button saves a checkpoint before stopping.
"""),
        *BOOT,
        md("## Run\n\nThe run's settings come from its `run.json` (saved by 00_setup), not from this notebook."),
        RUN_PARAMETER,
        LOAD_SETTINGS,
        md(f"## Train {stage}\n\nProgress bar, log lines and the loss curve below; the last line says where "
           "the final checkpoint is."),
        code(f'final = ws.train("{stage}")'),
    ]


NOTEBOOKS: dict[str, list[dict]] = {
    "00_setup": [
        intro("00_setup", "clara_lite 0 · Set up", """
Prepares the runtime and the run: installs what Colab lacks (never torch), mounts Google Drive,
asks for the run's settings and shows how this machine will train them.

**Needs:** a Colab runtime (a GPU one for real training: *Runtime > Change runtime type > T4 GPU*)
and a Google account for Drive; or a local Jupyter with clara_lite installed, where "Drive" is the
folder `$CLARA_DRIVE` (default `./drive`) and nothing is installed.

**Takes:** 1–3 min in a fresh runtime on a T4 or an A100 (pip installs; an A100 also tries a
prebuilt flash-attn wheel, capped at 5 min); seconds when run again in the same runtime. The
settings are the same for smollm2-135m and qwen2.5-1.5b; only the plan differs (qwen2.5-1.5b: ~5.5 GB
on a T4 in fp16 with gradient checkpointing, no 4-bit needed).

Then: `01_data` → `02_stage1` → `03_stage2` → `04_stage3` → `05_inference`.
"""),
        md("## 1. Environment"),
        *BOOT,
        md("""
## 2. Run settings

Fill in the form and click **Save settings**: they go into `<drive>/runs/<run>/run.json`, and every
later notebook (and every new runtime) reads them from there. An existing run's settings are shown,
not asked again; for different settings choose a new run name. Without widgets (a headless run)
set `USE_FORM = False`: the values below are saved as they are.
"""),
        code('''
# None = clara_lite's own default for that setting (the form shows it; `clara-lite train --help` lists them)
RUN_NAME = ""  # "" = continue the run set up last; a new name starts a new run ("my-run" if none yet)
BASE_MODEL = None  # e.g. "qwen2.5-1.5b", any registry name, Hugging Face id or folder (None: smollm2-135m)
COMPR_RATE = None  # document tokens per memory vector
DOC_MAX_LENGTH = None  # document tokens kept per passage
TOP_K = None  # documents retrieved per question
STAGE1_STEPS = 40  # optimizer steps per stage; 0 = train EPOCHS passes over the data
STAGE2_STEPS = 40
STAGE3_STEPS = 30
EPOCHS = None
SAVE_MINUTES = None  # checkpoint to Drive this often
# not in the form
LORA_R = None
MAX_DECODER_LENGTH = None  # decoder prompt + answer tokens kept
QUANTIZATION = "auto"  # "auto" follows the hardware plan; "4bit", "8bit" or "none"
SAVE_STEPS = None  # also checkpoint every N steps
LOG_STEPS = None
MICRO_BATCH_SIZE = None  # None: from the hardware plan
GRAD_ACCUM_STEPS = None
LR = None  # None: each stage's own (1e-4 for stage1/2, 5e-6 for stage3)
USE_FORM = True  # False: save the values above without asking
''', "parameters"),
        code('''
settings = nb.choose_settings(env.drive, nb.Settings(
    run_name=RUN_NAME, base_model=BASE_MODEL, compr_rate=COMPR_RATE, doc_max_length=DOC_MAX_LENGTH,
    generation_top_k=TOP_K, stage1_steps=STAGE1_STEPS, stage2_steps=STAGE2_STEPS, stage3_steps=STAGE3_STEPS,
    epochs=EPOCHS, save_minutes=SAVE_MINUTES, lora_r=LORA_R, max_decoder_length=MAX_DECODER_LENGTH,
    quantization=QUANTIZATION, save_steps=SAVE_STEPS, log_steps=LOG_STEPS, micro_batch_size=MICRO_BATCH_SIZE,
    grad_accum_steps=GRAD_ACCUM_STEPS, lr=LR,
), interactive=USE_FORM)
'''),
        md("## 3. Hardware profile and plan\n\nDevice, precision, attention, 4-bit or not, batch and expected "
           "memory, each with its reason."),
        code("nb.show_plan(settings)"),
        md("Next: **01_data**."),
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
ws.prepare_data(DATA_SOURCE, DATA_FOLDER, dataset=DATASET, split=DATASET_SPLIT, limit=DATASET_LIMIT,
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
        "Starts from `stage1/final` and tunes the `decoder` adapter to answer questions from the compressed "
        "candidate documents.",
        "02_stage1 finished (its `final` checkpoint on Drive).",
        "with the default settings on the example data (40 steps): ~1–2 min on a T4 and ~1 min on an A100 "
        "for smollm2-135m; ~6 min (T4) / ~2 min (A100) for qwen2.5-1.5b. Each row compresses all its "
        "candidate documents, so a step costs ~3x a stage1 step: per 1,000 steps at document length 256 "
        "and 16 rows per step, smollm2-135m ~45 min (T4) / ~10 min (A100); qwen2.5-1.5b ~6–8 h (T4) / "
        "~1.5 h (A100).",
    ),
    "04_stage3": stage_notebook(
        "04_stage3", "stage3", "clara_lite 4 · Stage 3: retrieval + generation end to end",
        "Starts from `stage2/final`, adds the `query_reasoner` adapter and trains retrieval (top-k over the "
        "compressed candidates) and generation together.",
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
held-out questions (EM, F1, Recall@1), and exports the model as a zip to `<drive>/exports/`, offered as
a download in Colab.

**Needs:** at least 02_stage1 finished; stage3 for retrieval. `heldout.jsonl` in the data folder for
the evaluation and the default questions (the example data has one).

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
        md("## Held-out evaluation"),
        code("scores = ws.evaluate_heldout(model, limit=EVAL_LIMIT, max_new_tokens=MAX_NEW_TOKENS)"),
        md("## Export"),
        code("zip_path = ws.export_model()"),
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
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
    })
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def path(name: str) -> Path:
    return HERE / f"{name}.ipynb"


def stale() -> list[str]:
    """Notebooks whose file differs from what this source generates (or is missing)."""
    return [name for name in NOTEBOOKS
            if not path(name).is_file() or path(name).read_text(encoding="utf-8") != render(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook differs from this source")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            print(f"{path(name)} differs from notebooks/build.py: run python notebooks/build.py")
        return 1 if names else 0
    for name in NOTEBOOKS:
        path(name).write_text(render(name), encoding="utf-8")
        print(f"wrote {path(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
