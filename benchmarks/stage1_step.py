"""Time one stage1 training step (forward + backward + AdamW) on SmolLM2-135M, CPU, fp32.

Prints seconds/step, tokens/s and peak RSS, next to upstream CLaRa's numbers on the same batch
(the first 4 rows of the upstream pretraining file), and the time to compress one document.

    python benchmarks/stage1_step.py                    # our compact encoder layout
    python benchmarks/stage1_step.py --layout upstream  # pad documents as upstream does
    python benchmarks/stage1_step.py --profile          # + a torch.profiler table of one step

The step is the runner's own (``training.optimizer_step``), cut into micro-batches as the hardware
plan cuts it on this machine (on CPU: one row each, so no padding); ``--micro-batch-size 4`` runs
the 4 rows as one padded batch (same loss and gradient, more memory). Options that are not the
package's defaults, to measure proposed changes: --lora-dropout 0, --autocast-bf16 (bf16 matmuls).
CPU seconds (process time, all threads) are printed beside wall time. On a machine that other
processes also load, OpenMP's default busy-waiting makes 2-thread steps 2-4x slower and erratic:
run with ``OMP_WAIT_POLICY=PASSIVE`` in the environment (read when torch loads) or ``--threads 1``.

Peak memory is the process's peak resident set (``ru_maxrss``): torch allocates outside Python's
heap, so tracemalloc would miss nearly all of it. The base model is loaded (and, the first time,
converted from GGUF) in a child process first, so the conversion's peak is not counted here.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from clara_lite.stages import StepTotals

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "upstream_pretrain_data.jsonl"

# Upstream CLaRa on the same 4 rows (from the issue): its collation, its step time and peak RSS.
UPSTREAM = {
    "enc_real": 607,
    "enc_padded": 4 * 267,
    "dec_real": 1445,
    "dec_padded": 4 * 496,
    "s_per_step": 33.5,
    "peak_rss_gb": 12.6,
    "compress_s": 0.9,
}
TARGET_SPEEDUP = 1.5  # tokens/s at least 1.5x upstream's
TARGET_MEMORY = 0.7  # peak RSS at most 0.7x upstream's


def peak_rss_gb() -> float:
    """Peak resident set of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**30


def warm_cache(model_name: str) -> None:
    """Build the converted-model cache in a child process so its peak RSS is not ours."""
    code = f"from clara_lite.model.base import load_base_model; load_base_model({model_name!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def token_counts(batches: list[dict]) -> dict:
    """Real and padded tokens over a step's micro-batches."""
    enc = [b["enc"]["attention_mask"] for b in batches]
    dec = [b["dec"]["attention_mask"] for b in batches]
    return {
        "enc_real": sum(int(m.sum()) for m in enc),
        "enc_padded": sum(m.numel() for m in enc),
        "enc_shape": " + ".join(f"{m.shape[0]}x{m.shape[1]}" for m in enc),
        "dec_real": sum(int(m.sum()) for m in dec),
        "dec_padded": sum(m.numel() for m in dec),
        "dec_shape": " + ".join(f"{m.shape[0]}x{m.shape[1]}" for m in dec),
        "answer_tokens": StepTotals.of(batches).answer_tokens,  # what the LM loss averages over
    }


def make_step(model, stage, rows, *, lr: float, micro_batch_size: int, bf16: bool):
    """One optimizer step on ``rows`` exactly as the runner does it (``training.optimizer_step``:
    micro-batches of ``micro_batch_size`` rows, losses averaged over the whole step, accelerate
    for backward/AMP, gradient clipping, AdamW), as a closure returning the loss."""
    import tempfile

    from clara_lite.config import TrainConfig
    from clara_lite.train.trainer import make_accelerator, optimizer_step

    cfg = TrainConfig(lr=lr, micro_batch_size=micro_batch_size, mixed_precision="bf16" if bf16 else "no")
    acc = make_accelerator(cfg, Path(tempfile.mkdtemp(prefix="clara-bench-")))
    collate = stage.collator(model)
    batches = [collate(rows[i : i + micro_batch_size]) for i in range(0, len(rows), micro_batch_size)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = acc.prepare(torch.optim.AdamW(params, lr=lr))

    def step() -> float:
        return optimizer_step(acc, model, stage, batches, params, optimizer, cfg.max_grad_norm)["loss"]

    return step, params, batches


def time_steps(step, steps: int) -> tuple[list[float], list[float], list[float]]:
    """(wall seconds, process CPU seconds, loss) per step over ``steps`` steps after one warm-up."""
    step()
    wall, cpu, losses = [], [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, losses


def time_compress(model, doc: str, runs: int) -> tuple[float, float, int]:
    """Mean wall and CPU seconds to compress one document without gradients (after a warm-up),
    and its encoder length."""
    model.compress_documents([doc])
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        model.compress_documents([doc])
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    model.train()  # compress_documents switches to eval
    return statistics.mean(wall), statistics.mean(cpu), int(model._encode([doc])["attention_mask"].shape[1])


def profile_step(step, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    print("\n--- torch.profiler, one step, by self CPU time ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print("--- by CPU memory allocated (self) ---")
    print(prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=rows))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument(
        "--layout",
        choices=("compact", "upstream"),
        default="compact",
        help="encoder padding: to the longest doc (ours) or to doc_max_length+3 (upstream)",
    )
    p.add_argument("--rows", type=int, default=4, help="batch: the first ROWS rows of the data file")
    p.add_argument("--data", type=Path, default=DATA, help="stage1 JSONL file (upstream format)")
    p.add_argument("--model", default="smollm2-135m", help="base model (registry name or folder)")
    p.add_argument("--compress-runs", type=int, default=5, help="runs averaged for the compression time")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-dropout", type=float, default=None, help="override ClaraConfig.lora_dropout (0.1)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="rows per forward pass (default: what the hardware plan picks for this machine)")
    p.add_argument("--autocast-bf16", action="store_true", help="bf16 mixed precision (CPU autocast)")
    p.add_argument("--profile", action="store_true", help="also profile one step with torch.profiler")
    return p.parse_args(argv)


def report(
    args,
    counts: dict,
    wall: list[float],
    cpu: list[float],
    losses: list[float],
    peak: float,
    rss_loaded: float,
    n_params: int,
    compress: tuple[float, float, int],
) -> None:
    up = UPSTREAM
    up_tps = (up["enc_real"] + up["dec_real"]) / up["s_per_step"]
    s_step = statistics.mean(wall)
    tps = (counts["enc_real"] + counts["dec_real"]) / s_step
    speedup, memory = tps / up_tps, peak / up["peak_rss_gb"]
    comparable = args.model == "smollm2-135m" and args.rows == 4 and args.data.name == DATA.name

    def verdict(ok: bool) -> str:
        return ("met" if ok else "MISSED") if comparable else "n/a, upstream ran smollm2-135m on these 4 rows"

    variant = [f"layout={args.layout}", f"{torch.get_num_threads()} threads"]
    variant += [f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"]
    variant += [f"lora_dropout={args.lora_dropout}"] if args.lora_dropout is not None else []
    variant += [f"micro-batches of {args.micro_batch_size} row(s)"]
    variant += ["bf16 autocast"] if args.autocast_bf16 else []
    print(
        f"stage1 step: {args.model}, fp32 weights, {args.rows} rows of {args.data.name}, {', '.join(variant)}; "
        f"{n_params:,} trainable LoRA params"
    )
    print(
        f"  encoder tokens: {counts['enc_real']} real, padded {counts['enc_padded']} "
        f"({counts['enc_shape']})   upstream: {up['enc_real']} real, "
        f"padded {up['enc_padded']} (4x267)"
    )
    print(
        f"  decoder tokens: {counts['dec_real']} real, padded {counts['dec_padded']} "
        f"({counts['dec_shape']}), {counts['answer_tokens']} scored   "
        f"upstream: {up['dec_real']} real, padded {up['dec_padded']} (4x496)"
    )
    print(
        f"  steps: wall s {', '.join(f'{t:.2f}' for t in wall)}; CPU s {', '.join(f'{t:.2f}' for t in cpu)}; "
        f"loss {', '.join(f'{x:.3f}' for x in losses)}"
    )
    print(
        f"  seconds/step: {s_step:.2f} (min {min(wall):.2f}; CPU {statistics.mean(cpu):.2f})   "
        f"upstream {up['s_per_step']:.1f}"
    )
    print(
        f"  tokens/s (real enc+dec): {tps:.1f}   upstream {up_tps:.1f}   ratio {speedup:.2f}x "
        f"(target >= {TARGET_SPEEDUP}x: {verdict(speedup >= TARGET_SPEEDUP)})"
    )
    print(
        f"  peak RSS: {peak:.2f} GB (after model load {rss_loaded:.2f} GB)   upstream {up['peak_rss_gb']:.1f} GB   "
        f"ratio {memory:.2f}x (target <= {TARGET_MEMORY}x: {verdict(memory <= TARGET_MEMORY)})"
    )
    wall_c, cpu_c, n_tok = compress
    print(
        f"  compress one document (no grad, {n_tok} encoder tokens): {wall_c:.3f} s (CPU {cpu_c:.3f} s, "
        f"mean of {args.compress_runs})   upstream ~{up['compress_s']} s (267 tokens)"
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    from clara_lite import ClaraModel
    from clara_lite.data import read_jsonl
    from clara_lite.stages import get_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    warm_cache(args.model)
    rows = read_jsonl(args.data, "stage1")[: args.rows]
    extra = {} if args.lora_dropout is None else {"lora_dropout": args.lora_dropout}
    model = ClaraModel.from_base(
        args.model,
        dtype=torch.float32,
        seed=args.seed,
        doc_max_length=256,
        compr_rate=32,
        lora_r=16,
        generation_top_k=1,
        encoder_layout=args.layout,
        **extra,
    )
    rss_loaded = current_rss_gb()
    stage = get_stage("stage1")
    stage.prepare(model)
    model.train()
    if args.micro_batch_size is None:
        from clara_lite.hardware import detect_hardware
        from clara_lite.model.base import resolve

        args.micro_batch_size = detect_hardware(model_params_b=resolve(args.model).params_b).micro_batch_size
    step, params, batches = make_step(
        model, stage, rows, lr=args.lr, micro_batch_size=args.micro_batch_size, bf16=args.autocast_bf16
    )
    counts = token_counts(batches)

    load_before = os.getloadavg()[0]
    wall, cpu, losses = time_steps(step, args.steps)
    load_after = os.getloadavg()[0]
    peak = peak_rss_gb()  # before compression and profiling, which only add smaller peaks
    compress = time_compress(model, rows[0].docs[0], args.compress_runs)
    report(args, counts, wall, cpu, losses, peak, rss_loaded, sum(p.numel() for p in params), compress)
    print(
        f"  load average (1 min) while timing: {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs"
    )
    if args.profile:
        profile_step(step, rows=25)


if __name__ == "__main__":
    main()
