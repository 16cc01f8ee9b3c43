"""The learning-rate schedule and the counterfactual-prompt pairing of deramos-train."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deramos.training.schedule import learning_rate
from deramos.training.train import pick_counterfactuals


def test_warmup_is_linear_then_cosine_decays_to_ten_percent():
    base, total, warmup = 1e-3, 1000, 100
    assert learning_rate(base, 0, total, warmup) == pytest.approx(base / warmup)
    assert learning_rate(base, 49, total, warmup) == pytest.approx(base * 50 / warmup)
    assert learning_rate(base, warmup, total, warmup) == pytest.approx(base)
    middle = warmup + (total - warmup) // 2
    assert learning_rate(base, middle, total, warmup) == pytest.approx(base * 0.55)
    assert learning_rate(base, total, total, warmup) == pytest.approx(base * 0.1)
    rates = [learning_rate(base, s, total, warmup) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))          # never rises after warm-up


def _example(wav, prompt, ta):
    return SimpleNamespace(clip=SimpleNamespace(path=Path("wav") / wav, prompt=prompt, ta=ta, mi=3.0))


def test_counterfactuals_off_gives_none():
    shard = [_example(f"c{i}.wav", f"p{i}", 3.0) for i in range(4)]
    assert pick_counterfactuals(shard, None, np.random.default_rng(0)) == (None, None)


def test_one_counterfactual_per_clip_from_its_own_pool():
    shard = [_example(f"c{i}.wav", f"p{i}", 3.0) for i in range(6)]
    table = {f"c{i}.wav": [(f"c{i} alt {k}", 1.0 + i + k / 10) for k in range(3)] for i in range(6)}
    prompts, targets = pick_counterfactuals(shard, table, np.random.default_rng(2))
    assert len(prompts) == len(targets) == 6
    for i, (prompt, target) in enumerate(zip(prompts, targets)):
        assert (prompt, target) in table[f"c{i}.wav"]
    picks = {tuple(pick_counterfactuals(shard, table, np.random.default_rng(seed))[0]) for seed in range(8)}
    assert len(picks) > 1                                          # drawn afresh, not always the first
