"""Encoder outputs for batches of clips and prompts, with frozen encoders served from cache.

A frozen encoder's output for a given input never changes, so it is computed once per clip
(or prompt) and kept on disk; later epochs run the heads only. A trainable encoder runs
every step, with gradients.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.clips import pad_batch, pad_sequences
from ..model.config import min_tail_samples
from ..model.text_encoder import tokenizer_file
from ..runtime.text import PromptTokenizer
from ..runtime.windows import split_windows, weighted_mean
from .feature_cache import FeatureCache, content_key, module_identity


class Featurizer:
    def __init__(self, model, *, cache_dir=None, device: str = "cpu", window_policy: str = "variable",
                 encode_batch: int = 8):
        self.model, self.device, self.policy = model, torch.device(device), window_policy
        self.cfg = model.cfg
        self.window = self.cfg.audio.window_samples
        self.encode_batch = encode_batch
        self.tokenizer = PromptTokenizer(tokenizer_file(self.cfg.text), self.cfg.text.max_tokens)
        self.audio_cache = self.text_cache = None
        self._text_memory: dict[str, torch.Tensor] = {}
        if cache_dir is not None and self.cfg.audio.frozen:
            self.audio_cache = FeatureCache(cache_dir, module_identity(model.audio_encoder, self.cfg.audio.__dict__))
        if cache_dir is not None and self.cfg.text.frozen:
            self.text_cache = FeatureCache(cache_dir, module_identity(model.text_encoder, self.cfg.text.__dict__))

    # -- text ------------------------------------------------------------------------------
    def text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens [B, L, Dt], mask [B, L] bool."""
        if not self.cfg.text.frozen:
            ids, mask = self.tokenizer.encode(prompts)
            ids, mask = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
            return self.model.text_encoder(ids, mask), mask.bool()
        tokens = [self._frozen_prompt(p) for p in prompts]
        out, mask = pad_sequences(tokens)
        return out.to(self.device), mask.to(self.device)

    def _frozen_prompt(self, prompt: str) -> torch.Tensor:
        if prompt in self._text_memory:
            return self._text_memory[prompt]
        key = content_key("text", prompt)
        tokens = self.text_cache.get(key) if self.text_cache else None
        if tokens is None:
            ids, mask = self.tokenizer.encode([prompt])
            with torch.no_grad():
                tokens = self.model.text_encoder(torch.from_numpy(ids).to(self.device),
                                                 torch.from_numpy(mask).to(self.device))[0].cpu()
            if self.text_cache:
                self.text_cache.put(key, tokens)
        self._text_memory[prompt] = tokens
        return tokens

    # -- audio -----------------------------------------------------------------------------
    def audio(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> frames [B, T, Da], mask [B, T] bool. Waves must fit the window."""
        shortest = min(len(w) for w in waves)
        if shortest < self.cfg.audio.samples_per_frame:
            raise ValueError(f"clip too short: {shortest} samples < {self.cfg.audio.samples_per_frame} "
                             f"(one encoder frame at {self.cfg.audio.sample_rate} Hz)")
        if not self.cfg.audio.frozen:
            wave, lengths = pad_batch(waves, self.policy, self.window)
            return self.model.audio_encoder(wave.to(self.device), lengths.to(self.device))
        frames = self._frozen_frames(waves)
        out, mask = pad_sequences(frames)
        return out.to(self.device), mask.to(self.device)

    def _frozen_frames(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        keys = [content_key("audio", self.policy, w.tobytes()) for w in waves]
        found = [self.audio_cache.get(k) if self.audio_cache else None for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        for start in range(0, len(todo), self.encode_batch):
            chunk = todo[start:start + self.encode_batch]
            wave, lengths = pad_batch([waves[i] for i in chunk], self.policy, self.window)
            with torch.no_grad():
                frames, mask = self.model.audio_encoder(wave.to(self.device), lengths.to(self.device))
            for row, i in enumerate(chunk):
                found[i] = frames[row, : int(mask[row].sum())].cpu()
                if self.audio_cache:
                    self.audio_cache.put(keys[i], found[i])
        return found

    def heads(self, waves: list[np.ndarray], prompts: list[str],
              counterfactual: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Head outputs; with `counterfactual` prompts (one per clip) the TA branch also runs on
        them over the same audio frames, as cf_ta, cf_ta_logits, cf_text_emb."""
        frames, frame_mask = self.audio(waves)
        tokens, token_mask = self.text(prompts)
        out = self.model.heads(frames, frame_mask, tokens, token_mask)
        if counterfactual is not None:
            tokens, token_mask = self.text(counterfactual)
            logits, _, text_emb = self.model.heads.ta(frames, frame_mask, tokens, token_mask)
            out.update(cf_ta=self.model.heads.bins(logits)[0], cf_ta_logits=logits, cf_text_emb=text_emb)
        return out


@torch.no_grad()
def predict(featurizer: Featurizer, waves: list[np.ndarray], prompts: list[str],
            batch_size: int = 8, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """MI and TA per clip; long clips are scored per window, weighted by window length.
    Windows are sorted by length so a batch wastes little padding."""
    cfg = featurizer.cfg
    pieces = []   # (clip index, window waveform)
    for index, wave in enumerate(waves):
        for start, end in split_windows(len(wave), cfg.audio.window_samples, min_tail_samples(cfg)):
            pieces.append((index, wave[start:end]))
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i][1]))
    mi_parts: list[list[tuple[float, int]]] = [[] for _ in waves]
    ta_parts: list[list[tuple[float, int]]] = [[] for _ in waves]
    for start in range(0, len(order), batch_size):
        batch = [pieces[i] for i in order[start:start + batch_size]]
        out = featurizer.heads([w for _, w in batch], [prompts[i] for i, _ in batch])
        for (index, wave), mi, ta in zip(batch, out["mi"].tolist(), out["ta"].tolist()):
            mi_parts[index].append((mi, len(wave)))
            ta_parts[index].append((ta, len(wave)))
        if progress is not None:
            progress.update(len(batch))
    mi = np.array([weighted_mean(*zip(*parts)) for parts in mi_parts])
    ta = np.array([weighted_mean(*zip(*parts)) for parts in ta_parts])
    return mi, ta
