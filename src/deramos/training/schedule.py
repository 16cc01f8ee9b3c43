"""The order of batches and the learning rate: functions of the seed, epoch and global step
alone, shared by training and pre-training."""
from __future__ import annotations

import math

import numpy as np


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The same shuffled batches on every rank and after a resume (seeded by epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def learning_rate(base: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%: a function of the global step alone, so a
    resumed run follows the same schedule without saving scheduler state."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_learning_rate(optimizer, scheduled: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group.get("lr_scale", 1.0) * scheduled
