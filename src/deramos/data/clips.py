"""Training data: MusicEval clips in memory at the encoder's rate, batches, frozen-feature cache.

Window policy (`--window-policy`):
- `variable` (default): a batch is padded to its longest clip and the masks make every clip
  score exactly as it would alone;
- `pad`: every clip is zero-padded to the full window and the padding counts as signal,
  as in the paper's reference code.
Clips longer than the window are cropped for training (a random crop when the audio encoder
trains, the first window when it is frozen so its features can be cached) and scored in
windows for evaluation (runtime/windows.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..runtime.audio import AudioError, load_audio, pad_waves
from .musiceval import Clip, read_split

log = logging.getLogger("deramos")
WINDOW_POLICIES = ("variable", "pad")


@dataclass
class Example:
    clip: Clip
    wave: np.ndarray          # float32 mono at the encoder's sample rate


def load_examples(root: str | Path, split: str, sample_rate: int, *, progress: bool = True,
                  list_file: str | Path | None = None) -> tuple[list[Example], list[str]]:
    """Decode a split; unreadable files are reported by name and skipped."""
    data = read_split(root, split, list_file=list_file)
    problems = list(data.problems)
    examples = []
    for clip in tqdm(data.clips, desc=f"loading {split}", unit="clip", disable=not progress, leave=False):
        try:
            examples.append(Example(clip, load_audio(clip.path, sample_rate)))
        except AudioError as err:
            problems.append(str(err))
    for problem in problems:
        log.warning("%s", problem)
    return examples, problems


def crop(wave: np.ndarray, window: int, rng: np.random.Generator | None) -> np.ndarray:
    if len(wave) <= window:
        return wave
    start = 0 if rng is None else int(rng.integers(0, len(wave) - window + 1))
    return wave[start:start + window]


def pad_batch(waves: list[np.ndarray], policy: str, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> wave [B, N] float32, lengths [B] int64."""
    if policy not in WINDOW_POLICIES:
        raise ValueError(f"unknown window policy {policy!r}; choose from {WINDOW_POLICIES}")
    batch, lengths = pad_waves(waves, window if policy == "pad" else None)
    if policy == "pad":          # the padding counts as signal
        lengths[:] = window
    return torch.from_numpy(batch), torch.from_numpy(lengths)


def pad_sequences(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[T_i, D] tensors -> [B, T, D] zero-padded, mask [B, T] bool."""
    width = max(t.shape[0] for t in items)
    out = items[0].new_zeros((len(items), width, items[0].shape[1]))
    mask = torch.zeros((len(items), width), dtype=torch.bool)
    for row, item in enumerate(items):
        out[row, :item.shape[0]] = item
        mask[row, :item.shape[0]] = True
    return out, mask


# ---------------------------------------------------------------------------------------------
# Frozen-encoder feature cache
