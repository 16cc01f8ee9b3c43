"""How a clip longer than the model's window is cut: consecutive windows of `window`
samples; the scores of the windows are averaged, weighted by each window's length.
Shared by the PyTorch reference scorer and the runtime, so both cut clips identically."""
from __future__ import annotations


def split_windows(num_samples: int, window: int, min_tail: int) -> list[tuple[int, int]]:
    """[(start, end)] covering the clip; a tail shorter than `min_tail` is dropped unless it
    is the whole clip (it would carry almost no weight and too few frames to score)."""
    if num_samples <= window:
        return [(0, num_samples)]
    spans = [(start, min(start + window, num_samples)) for start in range(0, num_samples, window)]
    if spans[-1][1] - spans[-1][0] < min_tail:
        spans.pop()
    return spans


def weighted_mean(values, weights) -> float:
    total = float(sum(weights))
    return float(sum(v * w for v, w in zip(values, weights)) / total)
