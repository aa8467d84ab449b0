"""05_inference's last section: an official CLaRa-7B release (apple/CLaRa-7B-{Base,Instruct,E2E}), no run needed.

Why its own module: it works without a run of this suite (no ``Workspace``), so someone who only wants
to try Apple's models runs the first two cells, the parameters cell and this section. Without CUDA a 7B is
refused before anything is downloaded: on a CPU it would load in fp32 (~29 GB) and crash the runtime. The load itself is
``ClaraModel.from_pretrained(repo, subfolder=...)``: only the checkpoint's files are fetched, the
gated base model uses ``HF_TOKEN`` (Colab's Secrets), and on a GPU the hardware plan picks dtype,
attention and 4-bit (a 7B on a 15 GB T4).

For example::

    model = official_model("e2e", 16)
    ask_official(model, ["Who wrote it?"], "", drive)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.hardware import dtype_name
from ..model.hub import TOKEN_NAME, hub_token, official_id
from ..model.modeling import ClaraModel
from ..model.size import model_params_b
from ..pipeline.examples import load_facts
from ..serve.ask import answer_many, read_docs

EXAMPLE_DOCS = 6  # the last example documents (no training file states them) and one question each
CPU_MAX_GB = 8.0  # fp32 weights a CPU runtime may load (Colab's has ~12 GB of RAM in all)


def cpu_refusal(params_b: float | None, cuda: bool) -> str | None:
    """Why this model cannot load here (no CUDA and fp32 weights beyond :data:`CPU_MAX_GB`), or None.

    >>> cpu_refusal(7.2, cuda=False)[:39]
    'The official model has 7.2B parameters:'
    """
    if cuda or params_b is None or params_b * 4 <= CPU_MAX_GB:
        return None
    return (f"The official model has {params_b:.1f}B parameters: without a GPU it would load in fp32 (~{params_b * 4:.0f} "
            "GB), more than this runtime's memory, and crash it. Runtime > Change runtime type > T4 GPU (free; "
            "it loads in 4-bit there, ~5 GB), then run the first cells and this section again.")


def official_model(variant: str, compression: int = 16) -> ClaraModel | None:
    """``"base"``, ``"instruct"`` or ``"e2e"`` at compression 16 or 128, loaded as the plan says; None
    (and nothing loaded) while ``variant`` is empty."""
    if not variant:
        print('OFFICIAL_MODEL = "": this section is skipped.')
        return None
    repo, subfolder = official_id(variant, compression)
    refused = cpu_refusal(model_params_b(repo, subfolder), torch.cuda.is_available())
    if refused:
        print(refused)
        return None
    if hub_token() is None:
        print(f"(no {TOKEN_NAME}: fine if the base model is already cached; its gated download needs one)")
    print(f"Loading {repo}/{subfolder}: its checkpoint files, then its base model (the first time: a download)")
    model = ClaraModel.from_pretrained(repo, subfolder=subfolder)
    weights = {"4bit": "4-bit nf4", "8bit": "8-bit"}.get(model.config.quantization or "", "full precision")
    dtype = dtype_name(model.causal_lm.get_input_embeddings().weight.dtype)
    print(f"Loaded {repo}/{subfolder} on {model.device}: base {model.config.base_model} in {weights} "
          f"({dtype} embeddings), attention {model.attn_implementation}; adapters {', '.join(model.adapter_names)}"
          f"; {'retrieves' if model.has_retriever else 'reads every document (no retriever)'}")
    return model


def ask_official(model: ClaraModel | None, questions: list[str], pool: str = "", drive: str | Path = ".",
                 max_new_tokens: int = 32) -> list[dict]:
    """Answer ``questions`` over ``pool`` (a JSONL or a folder of documents on Drive: PDF, DOCX, PPTX, HTML,
    Markdown, TXT); without them, a few of the shipped example documents and their questions. Nothing when
    ``model`` is None."""
    if model is None:
        return []
    if pool:
        path = Path(pool) if Path(pool).is_absolute() else Path(drive) / pool
        docs = read_docs(path)
    else:
        facts = load_facts()[-EXAMPLE_DOCS:]
        docs = [f["doc"] for f in facts]
        questions = questions or [f["qa"][0][0] for f in facts[:3]]
    if not questions:
        print("No questions: set QUESTIONS")
        return []
    out = []
    for one in answer_many(model, questions, docs, max_new_tokens=max_new_tokens):
        print(f"Q: {one.question}\nA: {one.text.strip()}")
        for rank, i in enumerate(one.retrieved or []):
            print(f"   retrieved #{rank + 1}: [{i}] {docs[i][:90]}")
        print()
        out.append({"question": one.question, "answer": one.text, "retrieved": one.retrieved})
    return out
