"""Time one stage1 training step (forward + backward + AdamW) on SmolLM2-135M, CPU, fp32.

Prints seconds/step, tokens/s and peak RSS, next to upstream CLaRa's numbers on the same batch
(the first 4 rows of the upstream pretraining file), and the time to compress one document.

    python benchmarks/stage1_step.py                    # our compact encoder layout
    python benchmarks/stage1_step.py --layout upstream  # pad documents as upstream does
    python benchmarks/stage1_step.py --profile          # + a torch.profiler table of one step

Peak memory is the process's peak resident set (``ru_maxrss``): torch allocates outside Python's
heap, so tracemalloc would miss nearly all of it. The base model is loaded (and, the first time,
converted from GGUF) in a child process first, so the conversion's peak is not counted here.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

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
    code = f"from clara_lite.models import load_base_model; load_base_model({model_name!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def token_counts(batch: dict) -> dict[str, int]:
    enc, dec = batch["enc"]["attention_mask"], batch["dec"]["attention_mask"]
    return {
        "enc_real": int(enc.sum()),
        "enc_padded": enc.numel(),
        "enc_shape": tuple(enc.shape),
        "dec_real": int(dec.sum()),
        "dec_padded": dec.numel(),
        "dec_shape": tuple(dec.shape),
        "answer_tokens": int((batch["dec"]["labels"] != -100).sum()),
    }


def train_step(model, stage, batch, optimizer) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss, _ = stage.loss(model, batch)
    loss.backward()
    optimizer.step()
    return loss.item()


def time_steps(model, stage, batch, optimizer, steps: int) -> tuple[list[float], list[float]]:
    """(seconds per step, loss per step) over ``steps`` steps, after one untimed warm-up step."""
    train_step(model, stage, batch, optimizer)
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(train_step(model, stage, batch, optimizer))
        times.append(time.perf_counter() - t0)
    return times, losses


def time_compress(model, doc: str, runs: int) -> tuple[float, int]:
    """Mean seconds to compress one document without gradients (after a warm-up), and its length."""
    model.compress_documents([doc])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.compress_documents([doc])
        times.append(time.perf_counter() - t0)
    model.train()  # compress_documents switches to eval
    return statistics.mean(times), int(model._encode([doc])["attention_mask"].shape[1])


def profile_step(model, stage, batch, optimizer, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        train_step(model, stage, batch, optimizer)
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
    p.add_argument("--profile", action="store_true", help="also profile one step with torch.profiler")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from clara_lite import ClaraModel
    from clara_lite.data import read_jsonl
    from clara_lite.stages import get_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    warm_cache(args.model)
    rows = read_jsonl(args.data, "stage1")[: args.rows]
    model = ClaraModel.from_base(
        args.model,
        dtype=torch.float32,
        seed=args.seed,
        doc_max_length=256,
        compr_rate=32,
        lora_r=16,
        generation_top_k=1,
        encoder_layout=args.layout,
    )
    rss_loaded = current_rss_gb()
    stage = get_stage("stage1")
    stage.prepare(model)
    model.train()
    batch = stage.collator(model)(rows)
    counts = token_counts(batch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)

    times, losses = time_steps(model, stage, batch, optimizer, args.steps)
    s_step = statistics.mean(times)
    peak = peak_rss_gb()
    compress_s, compress_len = time_compress(model, rows[0].docs[0], args.compress_runs)

    real = counts["enc_real"] + counts["dec_real"]
    up = UPSTREAM
    up_real = up["enc_real"] + up["dec_real"]
    up_tps = up_real / up["s_per_step"]
    tps = real / s_step
    print(
        f"stage1 step: {args.model}, fp32, layout={args.layout}, {args.rows} rows of {args.data.name}, "
        f"{torch.get_num_threads()} threads, trainable LoRA params {sum(p.numel() for p in params):,}"
    )
    print(
        f"  encoder tokens: {counts['enc_real']} real, padded {counts['enc_padded']} "
        f"({counts['enc_shape'][0]}x{counts['enc_shape'][1]})   "
        f"upstream: {up['enc_real']} real, padded {up['enc_padded']} (4x267)"
    )
    print(
        f"  decoder tokens: {counts['dec_real']} real, padded {counts['dec_padded']} "
        f"({counts['dec_shape'][0]}x{counts['dec_shape'][1]}), {counts['answer_tokens']} scored   "
        f"upstream: {up['dec_real']} real, padded {up['dec_padded']} (4x496)"
    )
    print(
        f"  step times (s): {', '.join(f'{t:.2f}' for t in times)}   losses: "
        f"{', '.join(f'{x:.3f}' for x in losses)}"
    )
    print(f"  seconds/step: {s_step:.2f}  (min {min(times):.2f})   upstream {up['s_per_step']:.1f}")
    print(
        f"  tokens/s (real enc+dec): {tps:.1f}   upstream {up_tps:.1f}   ratio {tps / up_tps:.2f}x "
        f"(target >= {TARGET_SPEEDUP}x: {'met' if tps / up_tps >= TARGET_SPEEDUP else 'MISSED'})"
    )
    print(
        f"  peak RSS: {peak:.2f} GB (after model load {rss_loaded:.2f} GB)   upstream {up['peak_rss_gb']:.1f} GB"
        f"   ratio {peak / up['peak_rss_gb']:.2f}x (target <= {TARGET_MEMORY}x: "
        f"{'met' if peak / up['peak_rss_gb'] <= TARGET_MEMORY else 'MISSED'})"
    )
    print(
        f"  compress one document (no grad, {compress_len} encoder tokens): {compress_s:.3f} s "
        f"(mean of {args.compress_runs})   upstream ~{up['compress_s']} s (267 tokens)"
    )
    if args.profile:
        profile_step(model, stage, batch, optimizer, rows=25)


if __name__ == "__main__":
    main()
