"""Small builders shared by tests (not fixtures of our code's behaviour)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file

from clara_lite import ClaraModel


@contextmanager
def one_thread():
    """torch on one thread inside, the previous count after: a test that leaves it at 1 makes a later
    in-process run differ from a CLI one (2 threads) in the last bits (8-bit AdamW on AVX512)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"

# The small run most training tests use: the tiny seeded model, 16-token documents at compression 4 (4 memory
# vectors), LoRA rank 4, top-2; as train() model options and as the same settings' command-line flags.
TINY_RUN = {"base_model": "tiny-random", "doc_max_length": 16, "compr_rate": 4, "lora_r": 4, "generation_top_k": 2}
TINY_RUN_FLAGS = ["--base", "tiny-random", "--doc-max-length", "16", "--compr-rate", "4", "--lora-r", "4",
                  "--top-k", "2"]


def tiny_model(seed: int = 0, adapters=("encoder", "decoder"), **config) -> ClaraModel:
    """A seeded tiny-random ClaraModel (2 layers, hidden 64) on CPU, fp32."""
    kw = dict(doc_max_length=32, compr_rate=8, generation_top_k=2, lora_r=4, lora_dropout=0.0)
    kw.update(config)
    torch.manual_seed(seed)
    return ClaraModel.from_base("tiny-random", seed=seed, adapters=adapters, **kw)


def saved_adapters(folder: Path) -> dict:
    """Every adapter weight of a saved model folder, keyed ``<adapter>/<tensor name>``."""
    out = {}
    for f in sorted((Path(folder) / "adapters").glob("*/adapter_model.safetensors")):
        out.update({f"{f.parent.name}/{k}": v for k, v in load_file(f).items()})
    return out


def max_abs_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two same-keyed, non-empty tensor dicts."""
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def lay_out_cache(cache: Path, fixture: Path, repo: str = "apple/CLaRa-7B-Instruct",
                  subfolder: str = "compression-16") -> Path:
    """A Hugging Face hub cache holding ``repo`` at ``main``: the upstream checkpoint in ``subfolder``
    and its base model ``tiny_base`` beside it (as in the fixture)."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / HUB_COMMIT
    shutil.copytree(fixture / "upstream_ckpt", snapshot / subfolder)
    shutil.copytree(fixture / "tiny_base", snapshot / "tiny_base")
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(HUB_COMMIT)
    return snapshot
