"""Each session's plan: what the hardware at hand decides, re-decided every time a stage starts or resumes.

Why per session: a Colab run outlives its runtimes, and the next runtime may be another GPU. What
changes results (model, LoRA, compression, learning rate, *rows per step*) is fixed in run.json by
the first session; what only the device decides is planned again here each time: dtype and mixed
precision, 4-bit when the model would not fit otherwise, attention, how the step's rows are cut
into micro-batch x accumulation (the loss is a step-wide mean, so the cut never changes the update)
and gradient checkpointing. A change that alters numerics (bf16 -> fp16 with a scaler, full -> 4-bit)
is logged as a warning and recorded with the session in run.json.

>>> split_rows(16, world=1, planned_micro=8)
(8, 2)
>>> split_rows(6, world=1, planned_micro=8)  # the largest micro-batch that divides the step
(6, 1)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..core.config import ClaraConfig, is_quantized, normalize_quantization
from ..core.hardware import (
    DeviceInfo,
    HardwareProfile,
    decide_profile,
    dtype_name,
    flash_attn_importable,
    probe_device,
)
from ..model.base import REGISTRY
from ..model.size import model_family, model_params_b
from ..model.stages import Stage
from .run import Run, RunError

log = logging.getLogger(__name__)

TEMPLATE_TOKENS = 40  # chat template, instruction and separators around a decoder prompt
CHARS_PER_TOKEN = 4  # rough for English text with the BPE tokenizers we use
SAMPLE_ROWS = 256  # rows looked at to size a row (a file's rows are alike)
WARN_CPU_PARAMS_B = 0.5  # on a CPU, training a model this big or bigger takes hours: say so

# fp16 overflows in these families' activations (NaN losses); a bf16 GPU or fp32 avoids it
FP16_RISKY = {
    "qwen2": "Qwen2/Qwen2.5", "qwen2_moe": "Qwen2-MoE", "qwen3": "Qwen3", "qwen3_moe": "Qwen3-MoE",
    "gemma": "Gemma", "gemma2": "Gemma 2", "gemma3_text": "Gemma 3",
}


@dataclass(frozen=True)
class SessionPlan:
    """This session's choices for one stage; ``notes`` are the warnings it logged."""

    profile: HardwareProfile
    quantization: str | None  # what the base loads as now: '4bit', '8bit' or None (full precision)
    micro_batch_size: int
    grad_accum_steps: int
    rows_per_step: int  # over all processes: fixed for the stage once it started
    processes: int
    mixed_precision: str
    gradient_checkpointing: bool
    tokens_per_row: int
    notes: tuple[str, ...] = field(default=())
    attention: str | None = None  # asked for (TrainConfig.attention); None: the profile's


    @property
    def dtype(self):
        return self.profile.dtype

    @property
    def attn_implementation(self) -> str:
        return self.attention or self.profile.attn_implementation

    def train_values(self) -> dict:
        """The :class:`~clara_lite.core.config.TrainConfig` fields this session sets."""
        return {"micro_batch_size": self.micro_batch_size, "grad_accum_steps": self.grad_accum_steps,
                "rows_per_step": self.rows_per_step, "mixed_precision": self.mixed_precision,
                "gradient_checkpointing": self.gradient_checkpointing, "attention": self.attention}

    def record(self) -> dict:
        """What run.json's session keeps as ``training`` (``attn_implementation`` is corrected to what
        the load used once the model is loaded)."""
        return {"quantization": self.quantization or "none", "dtype": dtype_name(self.dtype),
                "attn_implementation": self.attn_implementation, "processes": self.processes,
                "tokens_per_row": self.tokens_per_row, **self.train_values(), "notes": list(self.notes)}

    def summary(self) -> str:
        return (f"{self.profile.device.name}: {dtype_name(self.dtype)}, mixed precision {self.mixed_precision}, "
                f"{self.quantization or 'full-precision'} base, {self.attn_implementation}, "
                f"{self.micro_batch_size} x {self.grad_accum_steps}"
                + (f" x {self.processes} processes" if self.processes > 1 else "")
                + f" = {self.rows_per_step} rows per step (~{self.tokens_per_row} tokens per row), "
                f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}")


def tokens_per_row(examples, config: ClaraConfig, stage: Stage) -> int:
    """What one training row puts through the model: each of its documents (at most ``doc_max_length``
    tokens, plus the memory and marker tokens) and its decoder prompt (question, answer, one memory
    slot per document read), from the data itself; stage2/3 back-propagate through all k documents."""
    sample = examples[:SAMPLE_ROWS]
    docs = max(len(ex.docs) for ex in sample)
    doc_chars = max(len(d) for ex in sample for d in ex.docs)
    per_doc = min(config.doc_max_length, doc_chars // CHARS_PER_TOKEN + 1) + config.n_mem + 3
    read = min(docs, config.generation_top_k) if stage.retrieves else docs
    text = max(sum(len(t) for t in _texts(ex)) for ex in sample) // CHARS_PER_TOKEN + 1
    prompt = min(config.max_decoder_length, read * (config.n_mem + int(config.sep)) + text + TEMPLATE_TOKENS)
    query = per_doc if stage.retrieves else 0  # the query reasoner encodes each question like a document
    return docs * per_doc + prompt + query


def _texts(example) -> list[str]:
    if hasattr(example, "questions"):  # a stage1 row: its QA pairs or its paraphrase
        return [*example.questions, *example.answers]
    return [example.question, example.answers[0]]


def split_rows(rows_per_step: int, world: int, planned_micro: int, micro: int | None = None,
               accum: int | None = None) -> tuple[int, int]:
    """(micro-batch, accumulation) per process for ``rows_per_step`` rows over ``world`` processes:
    what was asked for when it adds up, else the plan's micro-batch or the largest divisor below it."""
    if rows_per_step % world:
        raise RunError(f"{rows_per_step} rows per step cannot be shared by {world} processes: use a number of "
                       f"processes that divides it, or a new run with --rows-per-step a multiple of {world}")
    per = rows_per_step // world
    if micro and accum and micro * accum != per:
        raise RunError(f"micro_batch_size {micro} x grad_accum_steps {accum} x {world} process(es) = "
                       f"{micro * accum * world} rows per step, but this stage trains with {rows_per_step} "
                       "(fixed in run.json): give only --batch-size (the accumulation follows), or start a new run")
    if micro or accum:
        given, name = (micro, "micro_batch_size") if micro else (accum, "grad_accum_steps")
        if per % given:
            raise RunError(f"{name} {given} does not divide the {per} rows per step of each process "
                           f"({rows_per_step} fixed in run.json): choose a divisor of {per}")
        return (given, per // given) if micro else (per // given, given)
    best = max(1, min(planned_micro, per))
    while per % best:
        best -= 1
    return best, per // best


def smaller_micro(micro: int, per_process_rows: int) -> int | None:
    """After running out of memory: the largest micro-batch below half of ``micro`` that divides the
    process's rows per step (so the accumulation grows and the step stays the same); None at 1."""
    if micro <= 1:
        return None
    best = micro // 2
    while per_process_rows % best:
        best -= 1
    return best


def plan_session(run: Run, stage: Stage, examples, config: ClaraConfig, train_options: dict, *, base: str,
                 quantization: str | None = None, world: int = 1, device: DeviceInfo | None = None,
                 flash_attn: bool | None = None, params_b: float | None = None) -> SessionPlan:
    """Plan this session of ``stage`` from the device (probed, or ``device`` when simulated), the model's
    size (``params_b``, else counted from ``base``'s config) and the rows of the data."""
    info = device or probe_device()
    if flash_attn is None:
        flash_attn = device is None and info.kind == "cuda" and flash_attn_importable()
    params = params_b if params_b is not None else model_params_b(base)
    tokens = tokens_per_row(examples, config, stage)
    profile = decide_profile(info, params, flash_attn, tokens_per_row=tokens)
    quant = normalize_quantization(quantization if quantization is not None else config.quantization)
    if quant is None:  # not fixed: 4-bit only when the model would not fit otherwise
        quant = "4bit" if profile.load_in_4bit else None
    elif quant == "none":
        quant = None
    saved = run.record.stages.get(stage.name)
    saved_train = saved.train if saved else None
    # on the very same device as this stage's last session, its choices stand (a plain resume is exact)
    same = _last_on_same_device(run, stage.name, info, saved_train, world)
    mixed = train_options.get("mixed_precision", same.get("mixed_precision", profile.mixed_precision))
    ckpt = train_options.get("gradient_checkpointing",
                             same.get("gradient_checkpointing", profile.gradient_checkpointing or is_quantized(quant)))
    rows = train_options.get("rows_per_step") or (saved_train.step_rows() if saved_train else None)
    micro, accum = train_options.get("micro_batch_size"), train_options.get("grad_accum_steps")
    if rows is None:  # the stage's first session: what was asked, else the plan's rows per step
        rows = (micro or profile.micro_batch_size) * (accum or max(1, -(-profile.grad_accum_steps // world))) * world
    if not (micro or accum) and same.get("micro_batch_size") and same.get("rows_per_step", rows) == rows:
        micro = same["micro_batch_size"]
    micro, accum = split_rows(rows, world, profile.micro_batch_size, micro, accum)

    notes = []
    previous = _previous(run)
    attention = train_options.get("attention")
    plan_ = SessionPlan(profile, quant, micro, accum, rows, world, mixed, ckpt, tokens, attention=attention)
    if previous is not None:
        notes += numerics_changes(previous, plan_)
    family = model_family(base)
    if mixed == "fp16" and family in FP16_RISKY:
        notes.append(fp16_note(FP16_RISKY[family]))
    if info.kind == "cpu" and (params is None or params >= WARN_CPU_PARAMS_B):
        notes.append(f"training a {'model of unknown size' if params is None else f'{params:g}B model'} on a CPU "
                     "takes hours; in Colab: Runtime > Change runtime type > T4 GPU, then run this again "
                     "(the run and its checkpoints stay on Drive)")
    return SessionPlan(profile, quant, micro, accum, rows, world, mixed, ckpt, tokens, tuple(notes), attention)


def _last_on_same_device(run: Run, stage: str, info: DeviceInfo, saved_train, world: int) -> dict:
    """The choices of ``stage``'s last session when it ran on a device identical to ``info`` with as many
    processes; {} otherwise (a new device: plan afresh)."""
    last = next((s for s in reversed(run.record.sessions) if s.stage == stage), None)
    if last is None:
        return {}
    keys = ("kind", "name", "capability", "total_mem_gb", "count")
    now = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(info).items() if k in keys}
    if {k: last.hardware.get("device", {}).get(k) for k in keys} != now:
        return {}
    if last.training:
        return last.training if last.training.get("processes", 1) == world else {}
    if saved_train is None:  # run.json from before sessions recorded their choices: the stage's settings
        return {}
    return {k: getattr(saved_train, k) for k in ("micro_batch_size", "mixed_precision", "gradient_checkpointing")}


def _previous(run: Run) -> dict | None:
    """The last session's choices (older run.json files have only the hardware plan)."""
    for session in reversed(run.record.sessions):
        if session.training:
            return session.training
        hw = session.hardware
        return {"dtype": hw.get("dtype"), "mixed_precision": hw.get("mixed_precision"),
                "quantization": "4bit" if hw.get("load_in_4bit") else "none",
                "attn_implementation": hw.get("attn_implementation")}
    return None


def numerics_changes(previous: dict, now: SessionPlan) -> list[str]:
    """What this session does differently from the last one in a way that changes numbers."""
    out = []
    before_mp, after_mp = previous.get("mixed_precision"), now.mixed_precision
    if before_mp and before_mp != after_mp:
        scaler = " with a GradScaler (loss scaling)" if after_mp == "fp16" else ""
        out.append(f"numerics change: mixed precision {before_mp} -> {after_mp}{scaler} on "
                   f"{now.profile.device.name}: {now.profile.reason('dtype')}")
    elif previous.get("dtype") and previous["dtype"] != dtype_name(now.dtype):
        out.append(f"numerics change: weights {previous['dtype']} -> {dtype_name(now.dtype)}")
    before_q, after_q = previous.get("quantization") or "none", now.quantization or "none"
    if before_q != after_q:
        why = now.profile.reason("load_in_4bit")
        out.append(f"numerics change: base weights {_weights(before_q)} -> {_weights(after_q)} ({why})")
    if previous.get("attn_implementation") and previous["attn_implementation"] != now.attn_implementation:
        out.append(f"attention {previous['attn_implementation']} -> {now.attn_implementation} "
                   "(same maths, slightly different rounding)")
    return out


def _weights(quantization: str) -> str:
    return {"4bit": "4-bit nf4", "8bit": "8-bit"}.get(quantization, "full precision")


def fp16_note(family: str) -> str:
    return (f"{family} models are known to overflow in fp16 (NaN losses); steps with a non-finite loss or "
            "gradient are skipped, but a GPU with bf16 (L4, A100) or fp32 (--mixed-precision no) avoids it")


def oom_advice(config: ClaraConfig, stage: Stage, *, quantized: bool, rows_per_step: int, micro: int = 1,
               checkpointing: bool = True, notebook: bool = False) -> str:
    """The exact next options once even one row at a time does not fit (or, with several processes,
    which cannot split a step on their own, at ``micro`` rows per pass), each named the way it is set
    where the run was started: a ``clara-lite train`` flag, or (``notebook``) 00_setup's parameter."""
    def how(flag: str, parameter: str) -> str:
        return f"{parameter} in 00_setup's parameters cell" if notebook else flag

    same_run = ("then run 00_setup and this notebook again: this run continues from its last checkpoint"
                if notebook else "this run can continue with it")
    new_run = ("in a new run (a new RUN_NAME in 00_setup): it changes results" if notebook else
               "in a new run (new --run-dir): it changes results")
    options = []
    if not quantized:
        four_bit = how("--quantization 4bit", 'QUANTIZATION = "4bit"')
        options.append(f"load the base in 4-bit: {four_bit}; {same_run}")
    if not checkpointing:
        options.append("recompute activations in the backward pass: "
                       f"{how('--gradient-checkpointing', 'GRADIENT_CHECKPOINTING = True')}; {same_run}")
    if config.doc_max_length > config.compr_rate:
        shorter = max(config.compr_rate, config.doc_max_length // 2)
        options.append(f"shorter documents: doc_max_length {config.doc_max_length} -> {shorter} "
                       f"({how(f'--doc-max-length {shorter}', f'DOC_MAX_LENGTH = {shorter}')}) {new_run}")
    if stage.previous is not None and config.generation_top_k > 1:
        fewer = max(1, config.generation_top_k // 2)
        options.append(f"fewer documents per question: generation_top_k {config.generation_top_k} -> {fewer} "
                       f"({how(f'--top-k {fewer}', f'TOP_K = {fewer}')}; rows then need only {fewer} candidates) "
                       f"{new_run}")
    smaller = [s.name for s in REGISTRY.values() if s.params_b and 0.1 < s.params_b < 2][:3]
    options.append(f"a smaller base model ({', '.join(smaller)}"
                   f"{': BASE_MODEL = ' + repr(smaller[0]) if notebook and smaller else ''}) {new_run}")
    options.append("a GPU with more memory: Runtime > Change runtime type (L4 24 GB, A100 40/80 GB); this run "
                   "continues there from its last checkpoint")
    where = ("even one row at a time" if micro == 1 else
             f"at {micro} rows per pass (several processes: give --batch-size {max(1, micro // 2)} to split further)")
    return (f"{stage.name} runs out of GPU memory {where} ({rows_per_step} rows per step). Next options:\n  - "
            + "\n  - ".join(options))
