"""Every setting's one home: :class:`ClaraConfig` (the model) and :class:`TrainConfig` (how a stage trains).

Each field has one name, one default and its help text; the CLI builds its flags from these
fields (``cli_flags``), the notebook settings hold only overrides of them, and ``run.json`` stores
one copy. ``ClaraConfig`` is saved as sorted JSON beside the weights (``clara_config.json``);
unknown keys are rejected so a typo in a hand-edited file fails loudly instead of being ignored.

Every value is checked when a config is built (a negative rate, a dropout of 5, ``inf``/``nan``,
a wrong JSON type), before it can reach ``run.json`` or a training step; the message names the
setting as a field and as its flag (``lora_r (--lora-r)``).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .layout import CONFIG_FILE, write_json

FORMAT_VERSION = 1

LAYOUTS = ("compact", "upstream")
MEMORY_SPACES = ("hidden", "tokens")
MEMORY_POSITIONS = ("after", "segments")
# Names configs written before the vocabulary settled still carry (a memory vector's share of a document was a
# "chunk", the word the pipeline and the index use for a passage): read as today's, written as today's.
_LEGACY_KEYS = {"chunk_loss_weight": "segment_loss_weight"}
_LEGACY_VALUES = {("memory_positions", "chunks"): "segments"}
QUANTIZATIONS = ("4bit", "8bit", "none")  # "none": full precision always; unset (None): the hardware plan decides
# every spelling a user or an upstream config may use, -> ours (bitsandbytes nf4 is our 4-bit)
_QUANTIZATION_NAMES = {"4bit": "4bit", "4-bit": "4bit", "nf4": "4bit", "int4": "4bit", "8bit": "8bit",
                       "8-bit": "8bit", "int8": "8bit", "none": "none", "no": "none", "full": "none"}
MIXED_PRECISIONS = ("no", "fp16", "bf16")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")  # transformers' attn_implementation values we load with
BEST_METRICS = ("em", "f1", "cover_em", "recall_at_1", "loss")  # held-out metrics a best checkpoint follows
# what a stage's answers are trained towards: the rows' gold answers, the text-reading teacher's (distillation,
# PISCO), or both (every row twice, once with each)
TARGETS = ("gold", "teacher", "both")
TEACHER_CUTS = ("none", "sentence")  # how much of a teacher answer is the target: all of it, its first sentence

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
# transformers schedulers that need no extra arguments (get_scheduler's names)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


def _name(setting: str) -> str:
    return f"{setting} (--{setting.replace('_', '-')})"


def check_number(setting: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """A ValueError naming ``setting`` unless ``value`` is a finite number within the bounds."""
    if value is None and optional:
        return
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = finite and not (
        low is not None and (value < low or low_open and value == low)
        or high is not None and (value > high or high_open and value == high))
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        rule = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
        unset = " (or unset)" if optional else ""
        raise ValueError(f"{_name(setting)} must be {rule}{unset}, got {value!r}")


BOUND_KEYS = ("low", "high", "low_open", "high_open")


def bounds(f) -> dict:
    """The bounds a field's metadata declares (``low``, ``high``, ``low_open``, ``high_open``)."""
    return {k: f.metadata[k] for k in BOUND_KEYS if k in f.metadata}


def check_fields(config) -> None:
    """Every field of ``config`` within its declared bounds and choices (the one place they are checked:
    flags, widgets and recipe files take them from the same metadata)."""
    for f in fields(config):
        value, optional = getattr(config, f.name), "None" in str(f.type)
        if "choices" in f.metadata and not (value is None and optional):
            if value not in f.metadata["choices"]:
                raise ValueError(f"{_name(f.name)} must be one of {tuple(f.metadata['choices'])}, got {value!r}")
        if bounds(f):
            check_number(f.name, value, optional=optional, **bounds(f))


_JSON_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "None": "null", "list[str]": "a list of strings"}


def _fits(value, kind: str) -> bool:
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True


def check_keys(cls, data, where: str) -> dict:
    """``data`` (read from JSON) if it is an object whose keys are all fields of the dataclass ``cls``;
    else a ValueError naming ``where`` (a typo in a hand-edited file fails loudly)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    return data


def from_json(cls, data, where: str):
    """``cls(**data)`` for a dict read from JSON, naming ``where`` when it is not an object, holds an
    unknown key or a value of the wrong type."""
    check_types(cls, check_keys(cls, data, where), where)
    return cls(**data)


def check_types(cls, data: dict, where: str) -> None:
    """A ValueError naming ``where`` and the field when a value of ``data`` (read from JSON) has
    another type than ``cls``'s field declares (an int where a string was expected, ...)."""
    for f in fields(cls):
        if f.name not in data:
            continue
        kinds = [k.strip() for k in str(f.type).split("|")]
        if not any(_fits(data[f.name], kind) for kind in kinds):
            expected = " or ".join(_JSON_TYPES.get(k, k) for k in kinds)
            raise ValueError(f"{where}: field '{f.name}' must be {expected}, got {json.dumps(data[f.name])[:80]}")


@dataclass
class ClaraConfig:
    """Construction arguments of a :class:`clara_lite.ClaraModel`.

    >>> ClaraConfig(base_model="tiny-random", doc_max_length=64, compr_rate=16).n_mem
    4
    """

    base_model: str = field(default="smollm2-135m", metadata={"help": "registry name, Hub id or local folder",
                                                              "aliases": ("--base",)})
    doc_max_length: int = field(default=256, metadata={"low": 1, "help": "document tokens kept per passage"})
    compr_rate: int = field(default=32, metadata={"low": 1, "help": "document tokens per memory vector"})
    generation_top_k: int = field(default=5, metadata={"low": 1, "help": "documents placed in the decoder prompt",
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
    lora_r: int = field(default=16, metadata={"low": 1, "help": "LoRA rank of every adapter"})
    lora_alpha: int | None = field(default=None, metadata={"low": 0, "low_open": True, "help": "LoRA alpha (default 2*r, as upstream)"})
    lora_dropout: float = field(default=0.1, metadata={"low": 0, "high": 1, "high_open": True, "help": "LoRA dropout while training"})
    lora_target_modules: str | list[str] = field(default="all-linear", metadata={
        "help": "the layers LoRA adapts: 'all-linear' (every linear layer but the LM head, as upstream) or module "
                "names, e.g. q_proj k_proj v_proj o_proj (QLoRA's attention-only habit)"})
    quantization: str | None = field(default=None, metadata={"help": "'4bit' (nf4 QLoRA; also 'nf4', 'int4'), "
                                                             "'8bit' ('int8') or 'none' (default: the hardware plan "
                                                             "decides each session: 4-bit only when the model would "
                                                             "not fit)"})
    mse_weight: float = field(default=0.1, metadata={"low": 0, "help": "weight of the memory/document MSE loss (its scale follows the base's final norm)"})
    memory_space: str = field(
        default="hidden",
        metadata={
            "help": "'hidden': memory vectors are the encoder's last hidden states (upstream CLaRa); 'tokens': each "
            "is read through the LM head and replaced by the mixture of token embeddings it predicts, so the "
            "decoder reads it like text from the first step (learns in minutes where 'hidden' needs far more "
            "data; not upstream's format)",
            "choices": MEMORY_SPACES,
        },
    )
    memory_positions: str = field(
        default="after",
        metadata={
            "help": "'after': memory tokens take the positions after the document (upstream); 'segments': "
            "memory token i takes the position of the last token of the document's i-th segment (its i-th "
            "compr_rate tokens), "
            "so it sits next to what it compresses (not upstream's format)",
            "choices": MEMORY_POSITIONS,
        },
    )
    segment_loss_weight: float = field(default=0.0, metadata={"low": 0, 
        "help": "weight of a loss that has memory vector i, read through the LM head, predict the i-th "
                "compr_rate tokens of its document (0: upstream's recipe)"})
    retrieval_temperature: float = field(default=0.02, metadata={"low": 0, "low_open": True, "help": "softmax temperature of the top-k"})
    contrastive_weight: float = field(
        default=0.0, metadata={"low": 0, "help": "stage3: weight of the retrieval loss on rows carrying pos_index"}
    )
    max_decoder_length: int = field(default=1024, metadata={"low": 1, "help": "decoder prompt+answer tokens kept"})
    trained_stages: list[str] = field(default_factory=list, metadata={"help": "stages completed, in order",
                                                                      "cli": False})
    format_version: int = field(default=FORMAT_VERSION, metadata={"cli": False})

    def __post_init__(self) -> None:
        check_fields(self)
        modules = self.lora_target_modules
        if modules == ["all-linear"]:  # the flag gives a list; PEFT wants the keyword as a string
            self.lora_target_modules = modules = "all-linear"
        if not (isinstance(modules, str) and modules.strip()) and not (
                isinstance(modules, list) and modules and all(isinstance(m, str) and m.strip() for m in modules)):
            raise ValueError(f"lora_target_modules (--lora-target-modules) must be 'all-linear' or module names, "
                             f"got {modules!r}")
        if self.compr_rate < 1 or self.doc_max_length < self.compr_rate:
            raise ValueError(
                f"doc_max_length ({self.doc_max_length}) must be >= compr_rate ({self.compr_rate}) >= 1: "
                "each document needs at least one memory token"
            )
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
    def from_dict(cls, data: dict, where: str = "ClaraConfig") -> ClaraConfig:
        if isinstance(data, dict):
            data = {_LEGACY_KEYS.get(k, k): v for k, v in data.items()}
            data = {k: _LEGACY_VALUES.get((k, v), v) if isinstance(v, str) else v for k, v in data.items()}
        return from_json(cls, data, where)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ClaraConfig:
        path = Path(directory) / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        try:
            return cls.from_dict(data, str(path))
        except ValueError as err:
            text = str(err)
            raise ValueError(text if text.startswith(str(path)) else f"{path}: {text}") from None


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

    lr: float | None = field(default=None, metadata={"low": 0, "low_open": True, "help": "peak learning rate (default: the stage's own, "
                                                             "1e-4 stage1/2, 5e-6 stage3)"})
    max_steps: int | None = field(default=None, metadata={"low": 1, "help": "optimizer steps (overrides epochs)"})
    epochs: float = field(default=1.0, metadata={"low": 0, "low_open": True, "help": "passes over the data when max_steps is unset"})
    micro_batch_size: int = field(default=4, metadata={"low": 1, "help": "rows per forward pass (memory and speed only; "
                                                               "default: the hardware plan)",
                                                       "aliases": ("--batch-size",)})
    grad_accum_steps: int = field(default=1, metadata={"low": 1, "help": "micro-batches per optimizer step "
                                                               "(default: the hardware plan)",
                                                       "aliases": ("--grad-accum",)})
    rows_per_step: int | None = field(default=None, metadata={"low": 1, 
        "help": "rows per optimizer step over all processes, fixed for a stage once it started; each session "
                "cuts it into micro-batch x accumulation for its own GPU (default: the first session's "
                "micro-batch x accumulation x processes)"})
    warmup_ratio: float = field(default=0.05, metadata={"low": 0, "high": 1, "help": "share of steps spent warming up"})
    scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name", "choices": SCHEDULERS})
    weight_decay: float = field(default=0.0, metadata={"low": 0, "help": "AdamW weight decay"})
    optim: str = field(default="adamw", metadata={
        "choices": OPTIMIZERS, "help": "adamw (torch); adamw_8bit, paged_adamw_8bit, paged_adamw_32bit (bitsandbytes, "
                                       "as QLoRA recipes use: 8-bit states, paged to CPU memory under pressure; on a "
                                       "CPU paging is off)"})
    max_grad_norm: float = field(default=1.0, metadata={"low": 0, "help": "gradient clipping norm (0: none)"})
    seed: int = field(default=42, metadata={"low": 0, "help": "seed of the initial adapters and the data order"})
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'fp16' (with GradScaler) or 'bf16' "
                                                                 "(default: the hardware plan)",
                                                         "choices": MIXED_PRECISIONS})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward "
                                                                          "(default: the hardware plan)"})
    attention: str | None = field(default=None, metadata={"help": "attention kernel (default: the hardware plan: "
                                                                  "flash_attention_2 when installed on sm 8.0+, else sdpa)",
                                                          "choices": ATTENTIONS})
    save_steps: int | None = field(default=None, metadata={"low": 0, "help": "checkpoint every N optimizer steps (0: none)"})
    save_minutes: float | None = field(default=20.0, metadata={"low": 0, "help": "checkpoint every M minutes (0: none)"})
    keep: int = field(default=2, metadata={"low": 1, "help": "complete checkpoints kept"})
    log_steps: int = field(default=10, metadata={"low": 1, "help": "a metrics line every N steps"})
    report_to: list[str] = field(default_factory=list, metadata={"help": "accelerate trackers, e.g. tensorboard"})
    retry_attempts: int = field(default=4, metadata={"low": 1, "help": "attempts at writing a checkpoint"})
    retry_delay_s: float = field(default=2.0, metadata={"low": 0, "help": "first back-off between attempts (doubles)"})
    max_nonfinite_steps: int = field(default=5, metadata={"low": 1, "help": "steps in a row with a non-finite loss or "
                                                                  "gradient (each skipped) before the stage stops"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out rows (this stage's format, or questions) scored into metrics.jsonl and the loss plot"})
    eval_steps: int | None = field(default=None, metadata={"low": 1, "help": "evaluate --eval-data every N optimizer steps "
                                                                   "(default: at the end only)"})
    eval_questions: int = field(default=64, metadata={"low": 0, "help": "held-out questions answered per evaluation "
                                                                "(0: all); the loss uses every row"})
    targets: str = field(default="gold", metadata={
        "choices": TARGETS,
        "help": "what the answers train towards: gold (the rows' answers), teacher (distillation: what the base "
                "model answers reading the documents' text, as text RAG does; cached in the run folder) or both "
                "(every row twice, once with each)"})
    teacher_max_new_tokens: int = field(default=32, metadata={"low": 1, "help": "tokens the teacher generates "
                                                                    "per answer (greedy)"})
    teacher_cut: str = field(default="none", metadata={
        "choices": TEACHER_CUTS, "help": "how much of a teacher answer is the target: none (all of it) or "
                                         "sentence (its first sentence)"})
    best_metric: str | None = field(default=None, metadata={
        "help": "keep the step with the best held-out metric in <stage>/best: em, f1, cover_em, recall_at_1 "
                "(higher is better) or loss (lower)", "choices": BEST_METRICS})

    # training settings that change the result; the others (save cadence, logging) may change on resume
    RESULT_KEYS = ("lr", "max_steps", "epochs", "rows_per_step", "warmup_ratio", "scheduler", "weight_decay",
                   "max_grad_norm", "seed", "optim", "targets", "teacher_max_new_tokens", "teacher_cut")
    # what each session's hardware plan decides again (a value given on the command line wins for that session)
    HARDWARE_KEYS = ("micro_batch_size", "grad_accum_steps", "mixed_precision", "gradient_checkpointing", "attention")

    def __post_init__(self):
        check_fields(self)

    def step_rows(self, processes: int = 1) -> int:
        """Rows per optimizer step: ``rows_per_step``, or what the micro-batches add up to."""
        return self.rows_per_step or self.micro_batch_size * self.grad_accum_steps * processes

    def learning_rate(self, stage) -> float:
        """``lr``, or the stage's own default."""
        return self.lr if self.lr is not None else getattr(stage, "default_lr", DEFAULT_LR)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "TrainConfig") -> TrainConfig:
        return from_json(cls, data, where)


@dataclass
class ExampleData:
    """The invented example world (``clara_lite.pipeline.examples``) a recipe trains on: people who exist
    nowhere else, each with a place, a job and a favourite colour; ``heldout`` of them only in heldout.jsonl."""

    n_facts: int = field(default=24, metadata={"low": 1, "help": "people in the world"})
    heldout: int = field(default=4, metadata={"low": 0, "help": "people whose documents no stage trains on"})
    n_candidates: int = field(default=4, metadata={"low": 1, "help": "candidate documents per stage3 / held-out question"})
    stage2_candidates: int | None = field(default=None, metadata={"low": 1, 
        "help": "candidate documents per stage2 question (default: n_candidates)"})

    def __post_init__(self):
        check_fields(self)
        if self.heldout >= self.n_facts:
            raise ValueError(f"heldout ({self.heldout}) must be below n_facts ({self.n_facts})")


# --------------------------------------------------------------------------- command-line flags

_TYPES = {"int": int, "float": float, "str": str}


def cli_fields(cls) -> list:
    """The fields of ``cls`` that are command-line flags (those without ``cli: False``)."""
    return [f for f in fields(cls) if f.metadata.get("cli", True)]


def add_flags(parser, cls, names: tuple[str, ...] | None = None) -> None:
    """One flag per field of ``cls`` (``--field-name`` plus its aliases; only ``names`` when given), help,
    type and choices from the field. Every flag defaults to None, so only what the user typed overrides
    run.json, the plan or the field's default; each carries ``config_field`` (``"ClaraConfig.compr_rate"``)
    so a test can tell a generated flag from a hand-written copy.
    """
    import argparse

    chosen = cli_fields(cls) if names is None else [next(f for f in cli_fields(cls) if f.name == n) for n in names]
    for f in chosen:
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
        elif kind == "str | list[str]":  # one keyword or several names
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = _TYPES[kind]
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        action = parser.add_argument(*flags, **kwargs)
        action.config_field = f"{cls.__name__}.{f.name}"


def given(args, cls) -> dict:
    """The flags of ``cls`` that were given on the command line, by field name."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if getattr(args, f.name, None) is not None}
