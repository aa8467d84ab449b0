"""The run's data order: a pure function of (seed, epoch), so a resume needs no data-loader state.

The run reads one stream of rows (epoch after epoch, each a seeded permutation) and optimizer step ``s``
always takes rows ``s*R .. (s+1)*R - 1`` of it (R rows per step), however they are cut into micro-batches:
a resumed run skips the rows it has seen instantly, on any micro-batch size.
"""

from __future__ import annotations

import functools
import math

import torch

from ..core.config import TrainConfig


def total_steps(n_rows: int, cfg: TrainConfig, world_size: int = 1) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_step = cfg.micro_batch_size * cfg.grad_accum_steps * world_size
    return max(1, math.ceil(cfg.epochs * n_rows / per_step))


def stream_rows(first: int, count: int, n_rows: int, seed: int) -> list[int]:
    """Row indices at positions ``first .. first+count-1`` of the run's row stream: epochs are seeded
    permutations of the rows, one after the other."""
    return [_epoch_order(n_rows, seed, p // n_rows)[p % n_rows] for p in range(first, first + count)]


@functools.lru_cache(maxsize=2)
def _epoch_order(n_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    """One epoch's permutation, drawn once (a step on CPU reads 16 one-row micro-batches of it)."""
    return tuple(torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())
