"""Hardware profile: what this machine is, and how training should use it.

Why two steps: ``probe_device`` reads raw facts (kind, compute capability, memory); the pure
``decide_profile`` turns them into the device's *profile* (dtype, attention, 4-bit, micro-batch), each
decision with a reason. Tests simulate a T4 or an A100 through ``decide_profile``; decisions come from
capability and memory, never from device names. (One word per idea: a *profile* is what a device decides
for a model; the *hardware plan* is what a training session makes of it for one stage and its data,
:mod:`clara_lite.train.plan`.)

>>> profile = detect_hardware(model_params_b=0.135)
>>> text = describe(profile)  # what ``clara-lite doctor`` prints
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import __version__

log = logging.getLogger(__name__)

GB = 1e9  # decimal GB: params_b * bytes_per_param is then directly in GB
MEMORY_BUDGET = 0.85  # share of free GPU memory a profile may use; the rest is CUDA context and fragmentation
OVERHEAD_FACTOR = 1.3  # activations, LoRA weights, their optimizer state, on top of frozen weights
OVERHEAD_GB = 1.5  # CUDA context, kernels workspace, tokenizer batches
NF4_BYTES_PER_PARAM = 0.6  # 4 bits plus quant constants and the 16-bit embeddings / lm_head
TARGET_ROWS = 16  # effective batch (micro batch x accumulation) a profile aims for
MAX_MICRO_BATCH = 8  # beyond this a large vocabulary's logits dominate memory
ROW_TOKENS = 512  # the row the activation estimate was made for; a profile told its rows' length scales it
AMPERE = (8, 0)  # bf16 tensor cores and flash-attention 2 start here

# Notes shown next to well-known devices; names only annotate, they never decide.
_NOTES = {
    "T4": "Turing sm 7.5, ~15 GB: Colab free tier; fp16 only, no flash-attention 2",
    "V100": "Volta sm 7.0, 16/32 GB: fp16 only, no flash-attention 2",
    "L4": "Ada sm 8.9, 24 GB: bf16 and flash-attention 2",
    "A100": "Ampere sm 8.0, 40/80 GB: bf16 and flash-attention 2",
    "H100": "Hopper sm 9.0, 80 GB: bf16 and flash-attention 2",
}


@dataclass(frozen=True)
class DeviceInfo:
    """Raw facts about the training device; memory in GB, ``None`` where not measurable."""

    kind: str  # 'cpu' | 'mps' | 'cuda'
    name: str
    capability: tuple[int, int] | None = None  # CUDA compute capability, e.g. (7, 5) for a T4
    total_mem_gb: float | None = None
    free_mem_gb: float | None = None
    count: int = 0  # number of CUDA GPUs visible
    index: int = 0  # which CUDA GPU this profile is for
    cpu_flags: frozenset[str] = frozenset()  # of CPU_FLAGS, those the CPU has (serving precision decides by them)

    def __post_init__(self):
        if self.kind not in ("cpu", "mps", "cuda"):
            raise ValueError(f"device kind must be 'cpu', 'mps' or 'cuda', got {self.kind!r}")
        if self.kind == "cuda" and (self.capability is None or self.total_mem_gb is None):
            raise ValueError("a CUDA device needs its compute capability and total memory")
        object.__setattr__(self, "cpu_flags", frozenset(self.cpu_flags))  # a list read back from JSON

    @property
    def torch_device(self) -> str:
        """The string to pass to ``.to(...)``: ``cuda:0``, ``mps`` or ``cpu``."""
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind


@dataclass(frozen=True)
class HardwareProfile:
    """Decisions for one device and model size; ``reasons`` holds (decision, why) pairs."""

    device: DeviceInfo
    model_params_b: float | None
    flash_attn_available: bool
    dtype: torch.dtype
    mixed_precision: str  # 'fp16' (needs a GradScaler) | 'bf16' | 'no'
    attn_implementation: str  # 'flash_attention_2' | 'sdpa' | 'eager'
    load_in_4bit: bool
    micro_batch_size: int
    grad_accum_steps: int
    gradient_checkpointing: bool
    est_train_mem_gb: float | None  # estimate for the chosen weights format, None if unknown
    reasons: tuple[tuple[str, str], ...]

    def reason(self, decision: str) -> str:
        """Why ``decision`` (e.g. ``'dtype'``, ``'attn_implementation'``) came out as it did."""
        return dict(self.reasons)[decision]

    def to_dict(self) -> dict:
        """JSON-ready view: dtype as ``'float32'``, capability as a list, reasons as a dict."""
        d = asdict(self)
        d["device"]["capability"] = list(self.device.capability) if self.device.capability else None
        d["device"]["cpu_flags"] = sorted(self.device.cpu_flags)
        return d | {"dtype": dtype_name(self.dtype), "reasons": dict(self.reasons)}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``'bfloat16'``."""
    return str(dtype).removeprefix("torch.")


def estimate_train_mem_gb(params_b: float, bytes_per_param: float) -> float:
    """Rough LoRA-training memory: frozen weights x 1.3 for activations and adapters, + 1.5 GB.

    >>> round(estimate_train_mem_gb(7.0, 2), 1)  # 7B in fp16
    19.7
    """
    return round(params_b * bytes_per_param * OVERHEAD_FACTOR + OVERHEAD_GB, 2)


def _sm(cap: tuple[int, int]) -> str:
    return f"sm {cap[0]}.{cap[1]}"


def _choose_dtype(device: DeviceInfo) -> tuple[torch.dtype, str, str]:
    """(dtype, mixed-precision mode, why)."""
    if device.kind == "cpu":
        return torch.float32, "no", "CPU half-precision matmuls are slow or missing"
    if device.kind == "mps":
        # fp16 would halve memory, but MPS fp16 training needs loss scaling and several ops fall
        # back to the CPU; the small models that suit a Mac fit unified memory in fp32.
        return torch.float32, "no", "fp16 training on MPS needs loss scaling and hits CPU fallbacks"
    cap = device.capability
    # Decide by capability, never torch.cuda.is_bf16_supported(): it says True on a T4 via emulation.
    if cap >= AMPERE:
        return torch.bfloat16, "bf16", f"{_sm(cap)} has bf16 tensor cores"
    return torch.float16, "fp16", f"{_sm(cap)} is below sm 8.0, so bf16 would be emulated (slow)"


_MIXED = {
    "no": "full fp32 training, no autocast",
    "bf16": "bf16 autocast, no loss scaling needed",
    "fp16": "fp16 autocast with a GradScaler against underflow",
}


def _choose_attention(device: DeviceInfo, dtype: torch.dtype, flash: bool, sdpa: bool) -> tuple[str, str]:
    cap, half = device.capability, dtype in (torch.float16, torch.bfloat16)
    if flash and device.kind == "cuda" and cap >= AMPERE and half:
        return "flash_attention_2", f"flash_attention_2: flash_attn installed and {_sm(cap)} >= sm 8.0"
    if device.kind != "cuda":
        why = f"{device.kind.upper()} has no flash-attention kernels"
    elif cap < AMPERE:
        why = f"{device.name} ({_sm(cap)}) is below sm 8.0 that flash-attention 2 needs"
    elif not flash:
        why = "flash_attn is not installed (pip install flash-attn for flash_attention_2)"
    else:
        why = f"flash-attention 2 needs fp16/bf16, dtype is {dtype_name(dtype)}"
    if sdpa:
        return "sdpa", f"sdpa: {why}"
    return "eager", f"eager: {why}, and this torch has no scaled_dot_product_attention"


def _choose_4bit(
    device: DeviceInfo, params: float | None, dtype: torch.dtype
) -> tuple[bool, float | None, str]:
    """(load in 4-bit?, estimated training GB for the chosen format, why)."""
    if params is None:
        return False, None, "no: model size unknown, cannot estimate memory"
    est = estimate_train_mem_gb(params, dtype.itemsize)
    if device.kind != "cuda":
        return False, est, f"no: bitsandbytes 4-bit is slow on {device.kind.upper()} (allowed if asked for)"
    free, budget = _budget(device)
    need = f"{params:g}B in {dtype_name(dtype)} needs ~{est:.1f} GB"
    if est <= budget:
        return False, est, f"no: {need}, fits 85% of {free:.1f} GB free"
    est4 = estimate_train_mem_gb(params, NF4_BYTES_PER_PARAM)
    why = f"yes (nf4): {need} > 85% of {free:.1f} GB free; 4-bit needs ~{est4:.1f} GB"
    return True, est4, why + (" and may still not fit" if est4 > budget else "")


def _choose_checkpointing(device: DeviceInfo, params: float | None, load_in_4bit: bool) -> tuple[bool, str]:
    # Checkpointing trades ~30% step time for most activation memory: worth it when memory is tight.
    if load_in_4bit:
        return True, "on: 4-bit means memory is tight"
    if params is None:
        return False, "off: model size unknown; turn it on if memory runs out"
    if device.kind == "cuda" and device.total_mem_gb < 24 and params > 1:
        return True, f"on: a {params:g}B model on a GPU under 24 GB"
    return False, "off: memory is not the bottleneck, keep steps fast"


def _choose_batch(
    device: DeviceInfo, params: float | None, est: float | None, ckpt: bool, tokens_per_row: int | None = None
) -> tuple[int, int, str]:
    """(micro batch, accumulation steps, why): the largest power-of-two micro batch that fits, <= 8.
    ``tokens_per_row``: what one training row puts through the model (all its documents and its prompt)."""
    if device.kind == "cpu":
        # a CPU gains nothing from batching but pays for padding and for every row's activations
        # at once; losses are step-wide means, so 1 x 16 trains exactly like 16 x 1
        micro, why = 1, "CPU: one row per pass (no padding, a third of the memory), same gradient"
    elif device.kind != "cuda":
        micro, why = 4, f"{device.kind.upper()} memory is not measured; 4 rows keep a step short"
    elif params is None or est is None:
        micro, why = 4, "model size unknown; a cautious default"
    else:
        # a 512-token row: activations ~0.4 GB per billion params, a quarter with checkpointing
        tokens = tokens_per_row or ROW_TOKENS
        row_gb = 0.4 * max(params, 1.0) * (tokens / ROW_TOKENS) * (0.25 if ckpt else 1.0)
        headroom = max(_budget(device)[1] - est, 0.0)
        micro = min(MAX_MICRO_BATCH, 2 ** int(math.log2(max(1, int(headroom / row_gb)))))
        why = f"~{headroom:.1f} GB headroom at ~{row_gb:.2f} GB per row of ~{tokens} tokens"
    accum = math.ceil(TARGET_ROWS / micro)
    return micro, accum, f"{micro} x {accum} = {micro * accum} rows per step: {why}"


def _budget(device: DeviceInfo) -> tuple[float, float]:
    """(free GB, GB a profile may use) on a CUDA device."""
    free = device.free_mem_gb if device.free_mem_gb is not None else device.total_mem_gb
    return free, free * MEMORY_BUDGET


def decide_profile(
    device: DeviceInfo,
    model_params_b: float | None,
    flash_attn_available: bool,
    *,
    sdpa_available: bool = True,
    tokens_per_row: int | None = None,
) -> HardwareProfile:
    """Turn device facts into training decisions; pure, so tests can simulate any GPU.

    >>> t4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15.8, 15.1, count=1)
    >>> decide_profile(t4, 7.24, flash_attn_available=False).load_in_4bit
    True
    """
    dtype, mixed, dtype_why = _choose_dtype(device)
    attn, attn_why = _choose_attention(device, dtype, flash_attn_available, sdpa_available)
    load_in_4bit, est, quant_why = _choose_4bit(device, model_params_b, dtype)
    ckpt, ckpt_why = _choose_checkpointing(device, model_params_b, load_in_4bit)
    micro, accum, batch_why = _choose_batch(device, model_params_b, est, ckpt, tokens_per_row)
    profile = HardwareProfile(
        device=device,
        model_params_b=model_params_b,
        flash_attn_available=flash_attn_available,
        dtype=dtype,
        mixed_precision=mixed,
        attn_implementation=attn,
        load_in_4bit=load_in_4bit,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        gradient_checkpointing=ckpt,
        est_train_mem_gb=est,
        reasons=(
            ("dtype", f"{dtype_name(dtype)}: {dtype_why}"),
            ("mixed_precision", f"{mixed}: {_MIXED[mixed]}"),
            ("attn_implementation", attn_why),
            ("load_in_4bit", quant_why),
            ("batch", batch_why),
            ("gradient_checkpointing", ckpt_why),
        ),
    )
    log.debug("hardware profile: %s", profile.to_dict())
    return profile


# Questions `clara-lite serve` decodes together (`--max-batch` overrides). A CLaRa prompt is short (the question
# and k x n_mem memory vectors), so a question's cache is small and the batch is bounded by how many rows a step
# computes in about one row's time, which grows with the device: (GPU total GB from which, batch), largest first.
SERVE_BATCH = 8  # CPU, MPS, a small GPU: fixed costs dominate a step up to about 8 rows (benchmarks: serve_concurrency)
# A100 40/80 GB, H100: 32; T4, V100, L4 (16-24 GB): 16. Not timed on a GPU here (there is none): the reason
# says so, and --max-batch overrides.
SERVE_BATCH_GPU = ((32.0, 32), (12.0, 16))


def decide_serving_batch(device: DeviceInfo) -> tuple[int, str]:
    """(questions decoded together when serving on ``device``, why); pure, like :func:`decide_profile`.

    >>> decide_serving_batch(DeviceInfo("cpu", "x86_64"))[0]
    8
    >>> decide_serving_batch(DeviceInfo("cuda", "Tesla T4", (7, 5), 15.8, 15.1, count=1))[0]
    16
    """
    if device.kind != "cuda":
        return SERVE_BATCH, (f"{device.kind.upper()}: a decoding step of {SERVE_BATCH} questions costs about one's; "
                             "more only makes each answer wait longer")
    for gb, batch in SERVE_BATCH_GPU:
        if device.total_mem_gb >= gb:
            return batch, (f"{device.name}, {device.total_mem_gb:g} GB (>= {gb:g} GB): {batch} short CLaRa prompts "
                           "decode in about one's time and their caches fit beside the model")
    return SERVE_BATCH, f"{device.name}, {device.total_mem_gb:g} GB (< {SERVE_BATCH_GPU[-1][0]:g} GB): a small GPU"


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # /proc/cpuinfo names


@dataclass(frozen=True)
class ServingPlan:
    """How answers are decoded on a device: ``backend`` 'llama.cpp' | 'torch', the torch weights'
    ``dtype`` (for llama.cpp: the merged copy's, before it is written as 8-bit blocks), and why."""

    backend: str
    dtype: torch.dtype
    why: str

    def to_dict(self) -> dict:
        return {"backend": self.backend, "dtype": dtype_name(self.dtype), "why": self.why}


def decide_serving(device: DeviceInfo, llama_cpp: bool = False) -> ServingPlan:
    """How to decode answers on ``device`` (``llama_cpp``: llama-cpp-python is installed); pure.

    A decoding step reads every weight once, so on a CPU its time is the weights' bytes: llama.cpp's
    8-bit blocks when it is installed (4x fewer bytes than fp32, one C++ graph a step); else bf16 only
    where the CPU multiplies bf16 natively (AMX or AVX512-BF16), because elsewhere bf16 is converted
    to fp32 for every matmul and runs slower than fp32 (measured: benchmarks/README.md). On a GPU the
    training dtype's rule: fp16 below sm 8.0 (T4), bf16 from Ampere.

    >>> decide_serving(DeviceInfo("cpu", "x86_64", cpu_flags=frozenset({"avx2"}))).dtype
    torch.float32
    >>> decide_serving(DeviceInfo("cpu", "x86_64", cpu_flags=frozenset({"avx2", "amx_bf16"}))).dtype
    torch.bfloat16
    >>> decide_serving(DeviceInfo("cuda", "Tesla T4", (7, 5), 15.8, 15.1, count=1)).dtype
    torch.float16
    """
    if device.kind == "cuda":
        dtype, _, why = _choose_dtype(device)
        return ServingPlan("torch", dtype, f"{dtype_name(dtype)} on the GPU: {why}")
    if device.kind == "mps":
        return ServingPlan("torch", torch.float32, "fp32 on MPS")
    if llama_cpp:
        return ServingPlan("llama.cpp", torch.float32,
                           "llama.cpp with 8-bit weights: a CPU step reads a quarter of fp32's bytes")
    native = sorted(device.cpu_flags & {"amx_bf16", "avx512_bf16"})
    if native:
        return ServingPlan("torch", torch.bfloat16, f"bf16: the CPU multiplies bf16 natively ({', '.join(native)})")
    return ServingPlan("torch", torch.float32, "fp32: this CPU has no AMX/AVX512-BF16, so bf16 would run slower")


def cpu_flags() -> frozenset[str]:
    """Of :data:`CPU_FLAGS`, those this machine's CPU reports (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return frozenset(line.split(":", 1)[-1].split()) & frozenset(CPU_FLAGS)


def flash_attn_importable() -> bool:
    """True if ``flash_attn`` is installed *and* imports (a wheel built for another CUDA fails)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception as err:  # ImportError, OSError from missing .so, RuntimeError from CUDA
        log.warning("flash_attn is installed but does not import: %s", err)
        return False
    return True


def probe_device(device: str | torch.device | None = None) -> DeviceInfo:
    """Read raw facts about ``device`` (default: first CUDA GPU, else MPS, else CPU)."""
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    if device is None:
        device = "cuda" if cuda_count else "mps" if mps else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        return DeviceInfo("cpu", platform.processor() or platform.machine() or "cpu", count=cuda_count,
                          cpu_flags=cpu_flags())
    if dev.type == "mps":
        if not mps:
            raise ValueError("device 'mps' requested but MPS is not available")
        return DeviceInfo("mps", "Apple MPS", count=cuda_count)
    if dev.type != "cuda":
        raise ValueError(f"unsupported device {device!r}; use 'cpu', 'mps' or 'cuda[:N]'")
    index = dev.index or 0
    if index >= cuda_count:
        raise ValueError(f"device {device!r} requested but {cuda_count} CUDA device(s) are visible")
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    cap, total_gb, free_gb = (props.major, props.minor), round(total / GB, 2), round(free / GB, 2)
    return DeviceInfo("cuda", props.name, cap, total_gb, free_gb, count=cuda_count, index=index)


def detect_hardware(
    model_params_b: float | None = None, *, device: str | torch.device | None = None
) -> HardwareProfile:
    """Probe this machine and decide its profile for a model of ``model_params_b`` billion parameters.

    >>> detect_hardware(0.135, device="cpu").attn_implementation
    'sdpa'
    """
    info = probe_device(device)
    flash = info.kind == "cuda" and flash_attn_importable()
    sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    return decide_profile(info, model_params_b, flash, sdpa_available=sdpa)


CPU_WARN_PARAMS_B = 0.5  # a CPU trains smaller models (the embedded 135M) in minutes: no warning for those
CPU_WARNING = ("no GPU: only tiny models train in reasonable time here. In Colab: Runtime > Change runtime "
               "type > T4 GPU (free) or better, then run the notebook again (run and checkpoints stay on Drive)")

_OPTIONAL = ("bitsandbytes", "flash-attn")  # listed only when installed


def library_versions() -> dict[str, str]:
    """Versions of clara_lite, python and the training stack; optional packages only when installed."""
    versions = {"clara_lite": __version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "accelerate", *_OPTIONAL):
        try:
            versions[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if dist not in _OPTIONAL:
                versions[dist] = "not installed"
    if torch.version.cuda:
        versions["cuda (torch build)"] = torch.version.cuda
    return versions


def cpu_threads_note(threads: int, cpus: int, load_avg: float, omp_wait_policy: str | None) -> str:
    """What CPU training should expect from its threads. OpenMP workers busy-wait between ops by
    default; when other processes also want the cores, that spinning makes steps several times slower
    and erratic, and ``OMP_WAIT_POLICY=PASSIVE`` (read when torch loads) fixes it; on an idle CPU PASSIVE
    costs a little (figures: benchmarks/README.md, "Measurements behind the defaults")."""
    line = f"{threads} torch thread(s) on {cpus} CPU(s), load average {load_avg:.1f}"
    if (omp_wait_policy or "").upper() == "PASSIVE":
        return line + "; OMP_WAIT_POLICY=PASSIVE: threads sleep while waiting"
    if load_avg > max(cpus - threads, 0) + 0.5:
        return (line + ": other processes use these CPUs; run with OMP_WAIT_POLICY=PASSIVE in the environment "
                "(or fewer threads: torch.set_num_threads) or steps slow down several-fold")
    return line + ": idle enough; leave OMP_WAIT_POLICY unset (PASSIVE is slower on an idle CPU)"


def describe(profile: HardwareProfile, versions: bool = True) -> str:
    """One screen of text: device, memory, each decision with its reason, library versions."""
    d = profile.device
    name = d.name + (f" ({_sm(d.capability)})" if d.capability else "")
    words = d.name.upper().replace("-", " ").split()  # "NVIDIA A100-SXM4-80GB" -> A100; "L40S" is no L4
    note = next((n for key, n in _NOTES.items() if key in words), "")
    mem = "not measured"
    if d.total_mem_gb is not None:
        mem = f"{d.free_mem_gb if d.free_mem_gb is not None else '?'} GB free of {d.total_mem_gb} GB"
    size = "size unknown" if profile.model_params_b is None else f"{profile.model_params_b:g}B params"
    if profile.est_train_mem_gb is not None:
        size += f", ~{profile.est_train_mem_gb:.1f} GB estimated for training"
    r = dict(profile.reasons)
    lines = [
        f"device        {d.torch_device}: {name}; {d.count} CUDA GPU(s) visible",
        *([f"              {note}"] if note else []),
        f"memory        {mem}",
        f"model         {size}",
        f"dtype         {r['dtype']}",
        f"mixed prec.   {r['mixed_precision']}",
        f"attention     {r['attn_implementation']}",
        f"4-bit         {r['load_in_4bit']}",
        f"batch         {r['batch']}",
        f"grad. ckpt    {r['gradient_checkpointing']}",
    ]
    if d.kind == "cpu" and (profile.model_params_b is None or profile.model_params_b >= CPU_WARN_PARAMS_B):
        lines.append(f"warning       {CPU_WARNING}")
    if versions:
        lines.append("versions      " + ", ".join(f"{k} {v}" for k, v in library_versions().items()))
    return "\n".join(lines)
