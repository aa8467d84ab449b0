"""Upstream CLaRa training commands (apple/ml-clara's ``openrlhf.cli.train_sft`` flags) as ``clara-lite train``.

Why a translation and not aliases: upstream's names collide with ours. Its ``--stage stage2`` is end to end
(our ``stage3``) while our ``stage2`` is its ``stage1_2``; its ``--save_steps -2`` and store-true switches mean
things our flags do not. So a command line that uses any upstream name is translated as a whole, each mapping
printed once, and what is ambiguous is refused with the exact command of ours instead of guessed.

>>> argv, lines = translate(["--stage", "stage1_2", "--compress_rate", "32", "--pretrain", "mistral-7b"])
>>> argv
['--stage', 'stage2', '--compr-rate', '32', '--base', 'mistral-7b', '--mse-weight', '0']
"""

from __future__ import annotations

from ..core.errors import ClaraError

# upstream stage -> ours (same training); upstream's "stage2" is refused: it is our stage3, and our stage2 is not it
STAGES = {"stage1": "stage1", "stage1_2": "stage2", "e2e": "stage3"}
AMBIGUOUS_STAGES = {
    "stage2": "upstream's stage2 is end-to-end training, which is our stage3 (our stage2 is upstream's stage1_2, "
              "instruction tuning), so it is not guessed: pass --stage e2e (or stage3) for end-to-end, or --stage "
              "stage1_2 for instruction tuning",
    "stage2_reasoning": "upstream's stage2_reasoning (end-to-end with reasoning traces) has no equivalent here; the "
                        "closest is --stage stage3 (end-to-end) on your rows",
}
# upstream flag -> our config field (a value each)
FIELDS = {
    "--pretrain": "base_model", "--compress_rate": "compr_rate", "--doc_max_length": "doc_max_length",
    "--generation_top_k": "generation_top_k", "--max_len": "max_decoder_length", "--learning_rate": "lr",
    "--max_epochs": "epochs", "--micro_train_batch_size": "micro_batch_size", "--train_batch_size": "rows_per_step",
    "--logging_steps": "log_steps", "--lr_warmup_ratio": "warmup_ratio", "--l2": "weight_decay",
    "--max_norm": "max_grad_norm", "--seed": "seed", "--max_ckpt_num": "keep", "--eval_dataset": "eval_data",
}
# upstream flag -> our own flag (a value each)
OPTIONS = {"--dataset": "--data", "--pretrain_checkpoint": "--init-from", "--save_path": "--run-dir",
           "--ckpt_path": "--run-dir"}
# steps flags where upstream's negative values mean "not by steps"
STEP_FIELDS = {"--save_steps": "save_steps", "--eval_steps": "eval_steps"}
SCHEDULERS = {"cosine_with_min_lr": "cosine", "cosine": "cosine", "constant": "constant", "linear": "linear",
              "constant_with_warmup": "constant_with_warmup"}
# upstream flags that do not apply here, with why (True: the flag takes a value)
IGNORED = {
    "--zero_stage": (True, "DeepSpeed ZeRO: several GPUs run through `accelerate launch -m clara_lite.cli train`"),
    "--ds_tensor_parallel_size": (True, "DeepSpeed tensor parallelism is not used"),
    "--local_rank": (True, "set by the launcher"),
    "--bf16": (False, "the hardware plan picks bf16 wherever the GPU has it (fp16 on a T4)"),
    "--flash_attn": (False, "the hardware plan uses flash-attention 2 when it is installed and the GPU has it"),
    "--qa_loss": (False, "always on: stage1's QA rows train the QA loss"),
    "--do_eval_gen": (False, "held-out evaluation answers questions when --eval-data is given"),
    "--load_checkpoint": (False, "a rerun in the same --run-dir always resumes from its newest checkpoint"),
    "--save_hf_ckpt": (False, "every checkpoint and final is a loadable model folder"),
    "--disable_ds_ckpt": (False, "no DeepSpeed checkpoints are written"),
    "--max_ckpt_mem": (True, "checkpoints are pruned by count (--keep)"),
    "--max_samples": (True, "every row of the file trains; cut the file to train on fewer (head -n N)"),
    "--dataset_probs": (True, "one data file per stage"), "--dataset_split": (True, "JSONL files have no splits"),
    "--eval_split": (True, "JSONL files have no splits"),
    "--adam_betas": (True, "AdamW with torch's default betas (0.9, 0.999)"),
    "--pretrain_mode": (False, "not used by CLaRa's stages"),
    "--stage2_mips": (False, "stage3 scores all of a row's candidates"),
    "--stage2_retrieval_top_n": (True, "stage3 keeps --top-k of a row's candidates"),
    "--disable_fast_tokenizer": (False, "the fast tokenizer is used"), "--use_ms": (False, "ModelScope is not used"),
    "--use_wandb": (True, "metrics go to <run>/<stage>/metrics.jsonl and a loss plot"),
    "--wandb_org": (True, "no wandb"), "--wandb_group": (True, "no wandb"), "--wandb_project": (True, "no wandb"),
    "--wandb_run_name": (True, "no wandb"), "--use_tensorboard": (True, "metrics go to metrics.jsonl"),
}
REFUSED = {"--pure_inference": "inference is `clara-lite ask` or `clara-lite eval`, not train"}
UPSTREAM = {*FIELDS, *OPTIONS, *STEP_FIELDS, "--lr_scheduler", "--gradient_checkpointing", "--mse_loss", *IGNORED,
            *REFUSED}


class UpstreamArgsError(ClaraError, ValueError):
    """An upstream training flag or stage that cannot be translated without guessing."""
    code = "upstream_args"


def is_upstream(argv: list[str]) -> bool:
    """Whether a ``train`` command line uses upstream's names (any flag of theirs, or a stage name only they have)."""
    words = [a.split("=", 1)[0] for a in argv]
    return any(w in UPSTREAM for w in words) or any(
        w == "--stage" and i + 1 < len(argv) and argv[i + 1] in ("stage1_2", "e2e", "stage2_reasoning")
        for i, w in enumerate(words))


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-") if field != "base_model" else "--base"


def translate(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(our argv, one line per mapping)`` for an upstream-style ``train`` command line.

    Our own flags pass through unchanged. Without ``--mse_loss`` upstream trains no MSE loss, so the
    translation says ``--mse-weight 0`` (ours defaults to upstream's 0.1 *with* the flag)."""
    pairs = []  # (word, value or None)
    i = 0
    while i < len(argv):
        word, eq, inline = argv[i].partition("=")
        takes_value = word in FIELDS or word in OPTIONS or word in STEP_FIELDS or word in ("--stage", "--lr_scheduler") \
            or (word in IGNORED and IGNORED[word][0])
        if takes_value and not eq:
            if i + 1 >= len(argv):
                raise UpstreamArgsError(f"{word} needs a value")
            pairs.append((word, argv[i + 1]))
            i += 2
        else:
            pairs.append((word, inline if eq else None))
            i += 1
    out, lines, mse = [], [], False
    for word, value in pairs:
        if word == "--stage":
            if value in AMBIGUOUS_STAGES:
                raise UpstreamArgsError(f"--stage {value}: {AMBIGUOUS_STAGES[value]}")
            ours = STAGES.get(value, value)
            out += ["--stage", ours]
            if ours != value:
                lines.append(f"--stage {value} -> --stage {ours}")
        elif word in REFUSED:
            raise UpstreamArgsError(f"{word}: {REFUSED[word]}")
        elif word in FIELDS:
            out += [_flag(FIELDS[word]), value]
            lines.append(f"{word} {value} -> {_flag(FIELDS[word])} {value}")
        elif word in OPTIONS:
            if OPTIONS[word] in out:  # --save_path and --ckpt_path both name the run folder: the first one wins
                lines.append(f"{word} {value}: ignored, {OPTIONS[word]} is already {out[out.index(OPTIONS[word]) + 1]}")
                continue
            out += [OPTIONS[word], value]
            lines.append(f"{word} {value} -> {OPTIONS[word]} {value}")
        elif word in STEP_FIELDS:
            if not value.lstrip("-").isdigit():
                raise UpstreamArgsError(f"{word} {value}: a whole number of steps")
            if int(value) > 0:
                out += [_flag(STEP_FIELDS[word]), value]
                lines.append(f"{word} {value} -> {_flag(STEP_FIELDS[word])} {value}")
            else:
                lines.append(f"{word} {value}: not by steps (checkpoints also go to Drive by time, --save-minutes)")
        elif word == "--lr_scheduler":
            if value not in SCHEDULERS:
                raise UpstreamArgsError(f"--lr_scheduler {value}: use --scheduler with one of {', '.join(SCHEDULERS)}")
            out += ["--scheduler", SCHEDULERS[value]]
            lines.append(f"--lr_scheduler {value} -> --scheduler {SCHEDULERS[value]}"
                         + (" (decays to 0, not to a minimum rate)" if value == "cosine_with_min_lr" else ""))
        elif word == "--gradient_checkpointing":
            out.append("--gradient-checkpointing")
            lines.append("--gradient_checkpointing -> --gradient-checkpointing")
        elif word == "--mse_loss":
            mse = True
            out += ["--mse-weight", "0.1"]
            lines.append("--mse_loss -> --mse-weight 0.1 (upstream's weight)")
        elif word in IGNORED:
            lines.append(f"{word}{'' if value is None else ' ' + value}: ignored, {IGNORED[word][1]}")
        else:  # one of ours
            out += [word] if value is None else [word, value]
    if not mse and "--mse-weight" not in out:
        out += ["--mse-weight", "0"]
        lines.append("(no --mse_loss) -> --mse-weight 0 (upstream trains no MSE loss without the flag)")
    return out, lines
