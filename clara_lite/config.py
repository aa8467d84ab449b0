"""The CLaRa model configuration: what is needed to rebuild a model without the training code.

Saved as sorted JSON beside the weights (``clara_config.json``); unknown keys are rejected so a
typo in a hand-edited file fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

CONFIG_FILE = "clara_config.json"
FORMAT_VERSION = 1

LAYOUTS = ("compact", "upstream")


@dataclass
class ClaraConfig:
    """Construction arguments of a :class:`clara_lite.ClaraModel`.

    >>> ClaraConfig(base_model="tiny-random", doc_max_length=64, compr_rate=16).n_mem
    4
    """

    base_model: str = field(default="smollm2-135m", metadata={"help": "registry name, Hub id or local folder"})
    doc_max_length: int = field(default=256, metadata={"help": "document tokens kept per passage"})
    compr_rate: int = field(default=32, metadata={"help": "document tokens per memory vector"})
    generation_top_k: int = field(default=5, metadata={"help": "documents placed in the decoder prompt"})
    different_mem_tokens: bool = field(default=True, metadata={"help": "<MEM0>..<MEMn-1> instead of one <MEM>"})
    sep: bool = field(default=True, metadata={"help": "a <SEP> token after each document's memory slots"})
    encoder_layout: str = field(
        default="compact",
        metadata={
            "help": "'upstream': left-pad every document to doc_max_length+3 (what upstream checkpoints "
            "were trained with); 'compact': pad to the batch's longest document, positions from the mask"
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of every adapter"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 2*r, as upstream)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout while training"})
    lora_target_modules: str | list[str] = field(default="all-linear", metadata={"help": "PEFT target modules"})
    quantization: str | None = field(default=None, metadata={"help": "None, '4bit' (nf4 QLoRA) or '8bit'"})
    mse_weight: float = field(default=0.1, metadata={"help": "weight of the memory/document MSE loss (its scale follows the base's final norm)"})
    retrieval_temperature: float = field(default=0.02, metadata={"help": "softmax temperature of the top-k"})
    contrastive_weight: float = field(
        default=0.0, metadata={"help": "stage3: weight of the retrieval loss on rows carrying pos_index"}
    )
    max_decoder_length: int = field(default=1024, metadata={"help": "decoder prompt+answer tokens kept"})
    trained_stages: list[str] = field(default_factory=list, metadata={"help": "stages completed, in order"})
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.compr_rate < 1 or self.doc_max_length < self.compr_rate:
            raise ValueError(
                f"doc_max_length ({self.doc_max_length}) must be >= compr_rate ({self.compr_rate}) >= 1: "
                "each document needs at least one memory token"
            )
        if self.encoder_layout not in LAYOUTS:
            raise ValueError(f"encoder_layout must be one of {LAYOUTS}, got {self.encoder_layout!r}")
        if self.generation_top_k < 1:
            raise ValueError("generation_top_k must be >= 1")
        if self.quantization in ("no", "none", ""):
            self.quantization = None
        if self.quantization not in (None, "4bit", "8bit"):
            raise ValueError(f"quantization must be None, '4bit' or '8bit', got {self.quantization!r}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"This model was written by a newer clara_lite (format {self.format_version}); "
                f"this one reads format <= {FORMAT_VERSION}: upgrade clara_lite"
            )

    @property
    def n_mem(self) -> int:
        """Memory tokens (compressed vectors) per document."""
        return self.doc_max_length // self.compr_rate

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ClaraConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown ClaraConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ClaraConfig:
        path = Path(directory) / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(data)
