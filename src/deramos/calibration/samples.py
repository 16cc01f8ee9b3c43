"""Real inputs for export validation and benchmarks: rendered music clips and prompts.

Random noise would exercise none of what matters (tonal spectra, silences, transients), so
the clips come from the synthetic-corpus renderer, with degradations and mismatching prompts
so that the scores spread out and a ranking comparison means something.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.synth.degrade import apply_degradations
from ..data.synth.music import SAMPLE_RATE, prompt_for, random_attributes, render_clip
from ..runtime.audio import resample
from ..runtime.contract import seconds_to_samples

DEGRADATIONS = ("noise", "clipping", "lowpass", "dropouts", "codec")


@dataclass
class SampleSet:
    waves: list[np.ndarray]   # float32 mono at the model's rate
    prompts: list[str]


def sample_set(n: int, sample_rate: int, window_seconds: float, seed: int = 0,
               min_seconds: float = 1.0) -> SampleSet:
    """n clips: a quarter short (min..3 s), a quarter exactly window-length, the rest in between;
    half of the prompts describe the clip, half describe another one."""
    rng = np.random.default_rng(seed)
    waves, prompts = [], []
    for i in range(n):
        seconds = _length(i, rng, min_seconds, window_seconds)
        attrs = random_attributes(rng)
        audio = render_clip(attrs, rng, SAMPLE_RATE, seconds)
        if i % 3:
            severity = {str(rng.choice(DEGRADATIONS)): float(rng.uniform(0.2, 1.0))}
            audio = apply_degradations(audio, severity, rng, SAMPLE_RATE)
        audio = resample(audio.astype(np.float32), SAMPLE_RATE, sample_rate)
        if i % 4 == 3:  # exactly one window, the longest input a graph sees
            audio = np.resize(audio, seconds_to_samples(window_seconds, sample_rate))
        waves.append(audio.astype(np.float32))
        described = attrs if i % 2 == 0 else random_attributes(rng)
        prompts.append(prompt_for(described, rng))
    return SampleSet(waves, prompts)


def _length(i: int, rng, min_seconds: float, window_seconds: float) -> float:
    if i % 4 == 0:
        return float(rng.uniform(min_seconds, min(3.0, window_seconds)))
    return float(rng.uniform(min(3.0, window_seconds), window_seconds))


def batches(n: int, sizes=(1, 3, 8, 16)):
    """Index batches of varying size, each mixing the short and long clips of sample_set."""
    start, k = 0, 0
    while start < n:
        size = sizes[k % len(sizes)]
        yield list(range(start, min(start + size, n)))
        start += size
        k += 1
