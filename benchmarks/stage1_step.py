"""Our default stage1 training step against a reference step doing upstream CLaRa's work, side by side.

    python benchmarks/stage1_step.py                 # 5 interleaved pairs, 3 timed steps each, then the table
    python benchmarks/stage1_step.py --runs 1 --steps 1 --model tiny-random   # a smoke run
    python benchmarks/stage1_step.py --child default --profile                # one variant, + torch.profiler
    python benchmarks/stage1_step.py --device cuda   # on a GPU: the T4 shape (4-bit base, fp16 + scaler)
    python benchmarks/stage1_step.py --mixed-precision bf16 --micro-batch 2   # levers, on the default variant only

Both variants train SmolLM2-135M (fp32, LoRA r16, dropout 0.1, doc_max_length 256, compr_rate 32) on the
first 4 rows of ``../shared/data/upstream_pretrain_data.jsonl`` with the runner's own ``optimizer_step``
(AdamW, clipping, step-wide loss means), so their losses agree; they differ only in the work done:

- **default**: what ``clara-lite train`` does on this machine: the hardware plan's micro-batches (on CPU
  one row per forward pass: no padding), documents padded to the longest in the batch, the LM head only
  on scored answer positions, only the last hidden state kept, one LoRA dropout mask per distinct input
  (``model.adapters.SharedDropout``).
- **reference**: our code doing upstream's work: documents left-padded to doc_max_length + 3 with the
  memory tokens after the padding, the 4 rows as one padded batch, full causal-LM forwards (the LM head
  over every encoder and decoder position, every layer's hidden states kept), an independent dropout
  mask per LoRA layer.

Each run is a fresh child process (so each has its own peak RSS: ``ru_maxrss``), runs alternate
default / reference (the order flips every pair, so neither always runs on the warmer machine), and each
child times ``--steps`` steps after one warm-up (its figure: their median). Printed: every run's
seconds/step, tokens/s (real encoder + decoder tokens / seconds), peak RSS and loss, the load average
around it; then each pair's default/reference ratio, their median and spread (min..max), and whether
every pair met the target. One timed step a run let a little load decide the result (a 0.96x pair beside
1.91x ones), hence 5 pairs of 3 steps by default. Nothing is compared with a number from another day. On a machine others also load, run with ``OMP_WAIT_POLICY=PASSIVE`` (read when torch loads).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clara_lite import ClaraModel
from clara_lite.core.config import TrainConfig
from clara_lite.core.hardware import detect_hardware
from clara_lite.model.adapters import SharedDropout
from clara_lite.model.base import load_base_model
from clara_lite.model.data import read_jsonl
from clara_lite.model.inputs import IGNORE_INDEX, mask_positions
from clara_lite.model.size import model_params_b
from clara_lite.model.stages import Stage1, StepTotals, _part
from clara_lite.train.update import make_accelerator, optimizer_step

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "upstream_pretrain_data.jsonl"
VARIANTS = ("default", "reference")
TARGET_SPEEDUP = 1.5  # default tokens/s >= 1.5x the reference's
TARGET_MEMORY = 0.5  # default peak RSS <= 0.5x the reference's


class UpstreamWork(Stage1):
    """Stage1's loss computed the way upstream computes it: full causal-LM forwards (logits at every
    position, all hidden states), cross-entropy over the whole shifted sequence. Same value as
    ``Stage1.loss`` (dropout off); several times the memory and time."""

    def loss(self, model, batch, totals=None):
        own = StepTotals.of([batch])
        totals = totals or own
        enc = batch["enc"]
        pos = enc.get("position_ids")
        with model.adapter("encoder"):
            out = model.causal_lm(input_ids=enc["input_ids"].to(model.device),
                                  attention_mask=enc["attention_mask"].to(model.device),
                                  position_ids=None if pos is None else pos.to(model.device),
                                  output_hidden_states=True, use_cache=False)
        hidden, mask, m = out.hidden_states[-1], enc["attention_mask"].to(model.device), model.config.n_mem
        memory = hidden[:, -m:]  # (B*K, M, H)
        doc_mask = mask.clone()
        doc_mask[:, -m:] = 0
        doc_mask = doc_mask.to(hidden.dtype).unsqueeze(-1)
        mse = F.mse_loss((hidden * doc_mask).sum(1) / doc_mask.sum(1), memory.mean(1))
        dec = batch["dec"]
        embeds = model.decoder_embeds(dec["input_ids"], memory)
        dmask = dec["attention_mask"].to(model.device)
        with model.adapter("decoder"):
            logits = model.causal_lm(inputs_embeds=embeds, attention_mask=dmask, position_ids=mask_positions(dmask),
                                     output_hidden_states=True, use_cache=False).logits  # (B, T, V)
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), dec["labels"].to(model.device)[:, 1:].flatten(),
                             ignore_index=IGNORE_INDEX)
        lm = _part(lm, own.answer_tokens, totals.answer_tokens)
        mse = _part(mse, own.docs, totals.docs)
        return lm + model.config.mse_weight * mse, {"lm_loss": lm.item(), "mse_loss": mse.item()}


def independent_dropout(model) -> None:
    """Back to PEFT's own dropout: a fresh mask in every LoRA layer (what upstream trains with)."""
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, drop in list(drops.items()):
                if isinstance(drop, SharedDropout):
                    drops[name] = nn.Dropout(drop.p)


def build_step(variant: str, model_name: str, rows, *, lora_dropout: float = 0.1, seed: int = 0, lr: float = 1e-4,
               device: str = "cpu", mixed_precision: str | None = None, micro_batch: int | None = None):
    """(step closure returning the step's loss, model, its micro-batches) for ``variant``. On ``cuda`` the
    T4-shaped configuration: the base in 4-bit nf4 (fp16 compute), fp16 autocast with a GradScaler.
    ``mixed_precision`` and ``micro_batch`` override the plan for the default variant only: levers to
    measure (the reference keeps upstream's fp32 single batch)."""
    reference = variant == "reference"
    gpu = {"dtype": torch.float16, "quantization": "4bit", "device_map": {"": 0}} if device == "cuda" else {
        "dtype": torch.float32}
    model = ClaraModel.from_base(model_name, seed=seed, doc_max_length=256, compr_rate=32,
                                 lora_r=16, lora_dropout=lora_dropout, generation_top_k=1,
                                 encoder_layout="upstream" if reference else "compact", **gpu)
    stage = UpstreamWork() if reference else Stage1()
    if reference:
        independent_dropout(model)
    stage.prepare(model)
    model.train()
    plan = detect_hardware(model_params_b=model_params_b(model_name), device=device)
    micro = len(rows) if reference else (micro_batch or plan.micro_batch_size)
    precision = "fp16" if device == "cuda" else "no"
    cfg = TrainConfig(lr=lr, micro_batch_size=micro,
                      mixed_precision=precision if reference or not mixed_precision else mixed_precision)
    acc = make_accelerator(cfg, Path(tempfile.mkdtemp(prefix="clara-bench-")))
    collate = stage.collator(model)
    batches = [collate(rows[i : i + micro]) for i in range(0, len(rows), micro)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = acc.prepare(torch.optim.AdamW(params, lr=lr))

    def step() -> float:
        return optimizer_step(acc, model, stage, batches, params, optimizer, cfg.max_grad_norm)["loss"]

    return step, model, batches


def peak_rss_gb() -> float:
    """Peak resident set of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(args) -> dict:
    """One variant in this process: a warm-up step, then ``--steps`` timed ones."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = read_jsonl(args.data, "stage1")[: args.rows]
    step, model, batches = build_step(args.child, args.model, rows, lora_dropout=args.lora_dropout, seed=args.seed,
                                      device=args.device, mixed_precision=args.mixed_precision,
                                      micro_batch=args.micro_batch)
    cuda = args.device == "cuda"
    real = sum(int(b["enc"]["attention_mask"].sum()) + int(b["dec"]["attention_mask"].sum()) for b in batches)
    padded = sum(b["enc"]["attention_mask"].numel() + b["dec"]["attention_mask"].numel() for b in batches)
    losses = [step()]
    load = os.getloadavg()[0]
    wall = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())  # .item() of the loss waits for the GPU
        wall.append(time.perf_counter() - t0)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    return {"variant": args.child, "s_per_step": statistics.median(wall), "wall": wall, "losses": losses,
            "real_tokens": real, "padded_tokens": padded, "micro_batches": len(batches),
            "peak_rss_gb": peak_rss_gb(), "load": [load, os.getloadavg()[0]], "threads": torch.get_num_threads(),
            "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def run_child(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--rows", str(args.rows),
           "--data", str(args.data), "--model", args.model, "--lora-dropout", str(args.lora_dropout),
           "--seed", str(args.seed), "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    cmd += ["--mixed-precision", args.mixed_precision] if args.mixed_precision else []
    cmd += ["--micro-batch", str(args.micro_batch)] if args.micro_batch else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="interleaved pairs of runs (one of each variant)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run, after one warm-up step")
    p.add_argument("--rows", type=int, default=4, help="the batch: the first ROWS rows of the data file")
    p.add_argument("--data", type=Path, default=DATA, help="stage1 JSONL file (upstream format)")
    p.add_argument("--model", default="smollm2-135m", help="base model (registry name or folder)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the T4-shaped configuration (4-bit base, fp16 + GradScaler); prints peak CUDA memory")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                   help="the default variant's autocast (a lever; default: the plan's, fp32 on CPU)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="the default variant's rows per forward pass (a lever; default: the plan's)")
    p.add_argument("--child", choices=VARIANTS, default=None, help="run one variant here and print its JSON")
    p.add_argument("--profile", action="store_true", help="with --child: a torch.profiler table on stderr")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    load_base_model(args.model)  # convert the embedded model once, outside the timed children
    results = {v: [] for v in VARIANTS}
    shape = "4-bit nf4 base, fp16 autocast + GradScaler, cuda" if args.device == "cuda" else "fp32"
    levers = [f"{k} {v}" for k, v in (("autocast", args.mixed_precision), ("micro-batch", args.micro_batch)) if v]
    shape += f" (default variant: {', '.join(levers)})" if levers else ""
    key, label = ("peak_cuda_gb", "peak CUDA memory") if args.device == "cuda" else ("peak_rss_gb", "peak RSS")
    print(f"stage1 step, {args.model} {shape}, {args.rows} rows of {args.data.name}, lora_dropout {args.lora_dropout}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, {os.cpu_count()} CPUs")
    print(f"| run | variant | micro-batches | s/step | tokens/s | {label} GB | losses | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|")
    for run in range(1, args.runs + 1):
        for variant in (VARIANTS if run % 2 else VARIANTS[::-1]):
            r = run_child(args, variant)
            results[variant].append(r)
            print(f"| {run} | {variant} | {r['micro_batches']} | {r['s_per_step']:.2f} | "
                  f"{r['real_tokens'] / r['s_per_step']:.1f} | {r[key]:.2f} | "
                  f"{', '.join(f'{x:.4f}' for x in r['losses'])} | {r['load'][0]:.1f} -> {r['load'][1]:.1f} |",
                  flush=True)
    med = {v: {"s": statistics.median(r["s_per_step"] for r in results[v]),
               "rss": statistics.median(r[key] for r in results[v]),
               "tps": statistics.median(r["real_tokens"] / r["s_per_step"] for r in results[v])} for v in VARIANTS}
    pairs = [(d["real_tokens"] / d["s_per_step"]) / (r["real_tokens"] / r["s_per_step"])
             for d, r in zip(results["default"], results["reference"], strict=True)]
    speedup = statistics.median(pairs)
    memory = med["default"]["rss"] / med["reference"]["rss"]
    for v in VARIANTS:
        print(f"{v:>9}: median {med[v]['s']:.2f} s/step, {med[v]['tps']:.1f} tokens/s, {label} {med[v]['rss']:.2f} GB")
    every = all(x >= TARGET_SPEEDUP for x in pairs)
    print(f"default / reference tokens/s per pair: {', '.join(f'{x:.2f}x' for x in pairs)}")
    print(f"median {speedup:.2f}x, spread {min(pairs):.2f}x..{max(pairs):.2f}x over {len(pairs)} pairs "
          f"(target >= {TARGET_SPEEDUP}x: median {'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}, "
          f"every pair {'met' if every else 'MISSED'}); {memory:.2f}x {label} "
          f"(target <= {TARGET_MEMORY}x: {'met' if memory <= TARGET_MEMORY else 'MISSED'})")


if __name__ == "__main__":
    main()
