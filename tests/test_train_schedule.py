"""The learning-rate schedule and the negative-prompt pairing of deramos-train."""
from types import SimpleNamespace

import numpy as np
import pytest

from deramos.train import learning_rate, negative_pairs


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


def _example(prompt, ta):
    return SimpleNamespace(clip=SimpleNamespace(prompt=prompt, ta=ta, mi=3.0))


def test_negative_prompts_off_keeps_the_pairs():
    shard = [_example(f"p{i}", 3.0 + i / 10) for i in range(6)]
    args = SimpleNamespace(negative_prompts=0.0, negative_ta=1.5)
    prompts, targets = negative_pairs(shard, shard, args, np.random.default_rng(0))
    assert prompts == [e.clip.prompt for e in shard] and targets == [e.clip.ta for e in shard]


def test_negative_prompts_swap_text_and_lower_the_target():
    pool = [_example(f"prompt {i}", 4.5) for i in range(50)]
    args = SimpleNamespace(negative_prompts=0.5, negative_ta=1.5)
    prompts, targets = negative_pairs(pool, pool, args, np.random.default_rng(3))
    swapped = [i for i, (p, e) in enumerate(zip(prompts, pool)) if p != e.clip.prompt]
    assert 10 <= len(swapped) <= 40                                  # about half
    assert all(targets[i] == 1.5 for i in swapped)
    assert all(targets[i] == 4.5 for i in range(len(pool)) if i not in swapped)
    assert all(prompts[i] in {e.clip.prompt for e in pool} for i in swapped)
