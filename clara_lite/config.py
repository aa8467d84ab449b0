"""Every setting's one home: :class:`ClaraConfig` (the model) and :class:`TrainConfig` (how a stage trains).

Each field has one name, one default and its help text; the CLI builds its flags from these
fields (``cli_flags``), the notebook settings hold only overrides of them, and ``run.json`` stores
one copy. ``ClaraConfig`` is saved as sorted JSON beside the weights (``clara_config.json``);
unknown keys are rejected so a typo in a hand-edited file fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .layout import CONFIG_FILE, write_json

FORMAT_VERSION = 1

LAYOUTS = ("compact", "upstream")
QUANTIZATIONS = ("4bit", "8bit", "none")  # "none": full precision always; unset (None): the hardware plan decides
# every spelling a user or an upstream config may use, -> ours (bitsandbytes nf4 is our 4-bit)
_QUANTIZATION_NAMES = {"4bit": "4bit", "4-bit": "4bit", "nf4": "4bit", "int4": "4bit", "8bit": "8bit",
                       "8-bit": "8bit", "int8": "8bit", "none": "none", "no": "none", "full": "none"}
MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class ClaraConfig:
    """Construction arguments of a :class:`clara_lite.ClaraModel`.

    >>> ClaraConfig(base_model="tiny-random", doc_max_length=64, compr_rate=16).n_mem
    4
    """

    base_model: str = field(default="smollm2-135m", metadata={"help": "registry name, Hub id or local folder",
                                                              "aliases": ("--base",)})
    doc_max_length: int = field(default=256, metadata={"help": "document tokens kept per passage"})
    compr_rate: int = field(default=32, metadata={"help": "document tokens per memory vector"})
    generation_top_k: int = field(default=5, metadata={"help": "documents placed in the decoder prompt",
                                                       "aliases": ("--top-k",)})
    different_mem_tokens: bool = field(default=True, metadata={"help": "<MEM0>..<MEMn-1> instead of one <MEM>"})
    sep: bool = field(default=True, metadata={"help": "a <SEP> token after each document's memory slots"})
    encoder_layout: str = field(
        default="compact",
        metadata={
            "help": "'upstream': left-pad every document to doc_max_length+3 (what upstream checkpoints "
            "were trained with); 'compact': pad to the batch's longest document, positions from the mask",
            "choices": LAYOUTS,
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of every adapter"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 2*r, as upstream)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout while training"})
    lora_target_modules: str | list[str] = field(default="all-linear", metadata={"help": "PEFT target modules",
                                                                                 "cli": False})
    quantization: str | None = field(default=None, metadata={"help": "'4bit' (nf4 QLoRA; also 'nf4', 'int4'), "
                                                             "'8bit' ('int8') or 'none' (default: the hardware plan "
                                                             "decides each session: 4-bit only when the model would "
                                                             "not fit)"})
    mse_weight: float = field(default=0.1, metadata={"help": "weight of the memory/document MSE loss (its scale follows the base's final norm)"})
    retrieval_temperature: float = field(default=0.02, metadata={"help": "softmax temperature of the top-k"})
    contrastive_weight: float = field(
        default=0.0, metadata={"help": "stage3: weight of the retrieval loss on rows carrying pos_index"}
    )
    max_decoder_length: int = field(default=1024, metadata={"help": "decoder prompt+answer tokens kept"})
    trained_stages: list[str] = field(default_factory=list, metadata={"help": "stages completed, in order",
                                                                      "cli": False})
    format_version: int = field(default=FORMAT_VERSION, metadata={"cli": False})

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
        self.quantization = normalize_quantization(self.quantization)
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
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ClaraConfig:
        path = Path(directory) / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(data)


def normalize_quantization(name: str | None) -> str | None:
    """``'nf4'``/``'int4'``/``'4bit'`` -> ``'4bit'``, ``'int8'``/``'8bit'`` -> ``'8bit'``, ``'no'``/``'none'`` ->
    ``'none'``; None, ``''`` and ``'auto'`` -> None (the plan decides). Anything else is refused, never ignored.

    >>> normalize_quantization("NF4"), normalize_quantization("int8"), normalize_quantization("auto")
    ('4bit', '8bit', None)
    """
    if name is None or str(name).strip().lower() in ("", "auto"):
        return None
    try:
        return _QUANTIZATION_NAMES[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"Unknown quantization {name!r}: use '4bit' (or 'nf4', 'int4'), '8bit' (or 'int8'), "
                         "'none', or leave it unset for the hardware plan") from None


def is_quantized(name: str | None) -> bool:
    """Whether ``name`` (normalized) loads the base through bitsandbytes."""
    return normalize_quantization(name) in ("4bit", "8bit")


DEFAULT_LR = 1e-4  # stages define their own default (``stages.Stage.default_lr``); this is the fallback


@dataclass
class TrainConfig:
    """How one stage trains. ``None`` fields are filled from the hardware plan or the stage."""

    lr: float | None = field(default=None, metadata={"help": "peak learning rate (default: the stage's own, "
                                                             "1e-4 stage1/2, 5e-6 stage3)"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data when max_steps is unset"})
    micro_batch_size: int = field(default=4, metadata={"help": "rows per forward pass (memory and speed only; "
                                                               "default: the hardware plan)",
                                                       "aliases": ("--batch-size",)})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step "
                                                               "(default: the hardware plan)",
                                                       "aliases": ("--grad-accum",)})
    rows_per_step: int | None = field(default=None, metadata={
        "help": "rows per optimizer step over all processes, fixed for a stage once it started; each session "
                "cuts it into micro-batch x accumulation for its own GPU (default: the first session's "
                "micro-batch x accumulation x processes)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps spent warming up"})
    scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: none)"})
    seed: int = field(default=42, metadata={"help": "seed of the initial adapters and the data order"})
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'fp16' (with GradScaler) or 'bf16' "
                                                                 "(default: the hardware plan)",
                                                         "choices": MIXED_PRECISIONS})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward "
                                                                          "(default: the hardware plan)"})
    save_steps: int | None = field(default=None, metadata={"help": "checkpoint every N optimizer steps"})
    save_minutes: float | None = field(default=20.0, metadata={"help": "checkpoint every M minutes"})
    keep: int = field(default=2, metadata={"help": "complete checkpoints kept"})
    log_steps: int = field(default=10, metadata={"help": "a metrics line every N steps"})
    report_to: list[str] = field(default_factory=list, metadata={"help": "accelerate trackers, e.g. tensorboard"})
    retry_attempts: int = field(default=4, metadata={"help": "attempts at writing a checkpoint"})
    retry_delay_s: float = field(default=2.0, metadata={"help": "first back-off between attempts (doubles)"})

    # training settings that change the result; the others (save cadence, logging) may change on resume
    RESULT_KEYS = ("lr", "max_steps", "epochs", "rows_per_step", "warmup_ratio", "scheduler", "weight_decay",
                   "max_grad_norm", "seed")
    # what each session's hardware plan decides again (a value given on the command line wins for that session)
    HARDWARE_KEYS = ("micro_batch_size", "grad_accum_steps", "mixed_precision", "gradient_checkpointing")

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}")
        if self.micro_batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("micro_batch_size and grad_accum_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.rows_per_step is not None and self.rows_per_step < 1:
            raise ValueError("rows_per_step must be >= 1")

    def step_rows(self, processes: int = 1) -> int:
        """Rows per optimizer step: ``rows_per_step``, or what the micro-batches add up to."""
        return self.rows_per_step or self.micro_batch_size * self.grad_accum_steps * processes

    def learning_rate(self, stage) -> float:
        """``lr``, or the stage's own default."""
        return self.lr if self.lr is not None else getattr(stage, "default_lr", DEFAULT_LR)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


# --------------------------------------------------------------------------- command-line flags

_TYPES = {"int": int, "float": float, "str": str}


def cli_fields(cls) -> list:
    """The fields of ``cls`` that are command-line flags (those without ``cli: False``)."""
    return [f for f in fields(cls) if f.metadata.get("cli", True)]


def add_flags(parser, cls) -> None:
    """One flag per field of ``cls`` (``--field-name`` plus its aliases), help from the field.

    Every flag defaults to None, so only what the user typed overrides run.json or the plan.
    """
    import argparse

    for f in cli_fields(cls):
        flags = [f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())]
        text = f.metadata.get("help", "")
        if f.default is not MISSING and f.default is not None and "default" not in text:
            text += f" (default {f.default})"
        kind = str(f.type).replace(" | None", "").strip()
        kwargs: dict = {"dest": f.name, "default": None, "help": text}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("list["):
            kwargs["nargs"] = "*"
        else:
            kwargs["type"] = _TYPES[kind]
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*flags, **kwargs)


def given(args, cls) -> dict:
    """The flags of ``cls`` that were given on the command line, by field name."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if getattr(args, f.name, None) is not None}
