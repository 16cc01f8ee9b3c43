"""The DeRA-MOS model: audio encoder + text encoder + MI/TA heads.

    wave [B, N], lengths [B]          --audio_encoder-->  frames [B, T, Da], frame_mask [B, T]
    input_ids, attention_mask [B, L]  --text_encoder--->  tokens [B, L, Dt]
    frames, masks, tokens             --heads---------->  mi, ta [B], mi_dist, ta_dist [B, K], ...
"""
from __future__ import annotations

import torch
from torch import nn

from .audio_encoder import AudioEncoder, load_muq_encoder
from .config import ModelConfig
from .heads import Heads
from .text_encoder import TextEncoder


def build_audio_encoder(cfg) -> tuple[nn.Module, list[str]]:
    """(encoder, checkpoint keys it ignored) for an AudioEncoderConfig."""
    if cfg.arch == "musicnn":
        from .musicnn import MusicnnEncoder

        return MusicnnEncoder(cfg), []
    if cfg.source:
        return load_muq_encoder(cfg.source, cfg)
    return AudioEncoder(cfg), []


class DeRAMOS(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.audio_encoder, self.ignored_checkpoint_keys = build_audio_encoder(cfg.audio)
            cfg.audio = self.audio_encoder.cfg
            self.text_encoder = TextEncoder(cfg.text, seed=seed + 1)
            tags = self.audio_encoder.tags() if hasattr(self.audio_encoder, "tags") else []
            self.heads = Heads(cfg.audio.hidden_size, self.text_encoder.hidden_size, cfg.heads,
                               tag_index=[index for _, index in tags])
        self.cfg = cfg
        if getattr(self.heads.ta, "grounding", None) is not None:   # only the cross-attention TA has one
            self.heads.ta.grounding.set_tag_embeddings(self.embed_texts([name.lower() for name, _ in tags]))
        if cfg.audio.frozen:
            self.audio_encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.audio.frozen:
            self.audio_encoder.eval()   # frozen: BatchNorm statistics and dropout stay fixed
        return self

    def forward(self, wave, lengths, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        frames, frame_mask = self.audio_encoder(wave, lengths)
        tokens = self.text_encoder(input_ids, attention_mask)
        return self.heads(frames, frame_mask, tokens, attention_mask.bool())

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[N, Dt]: each text through the text encoder, mean-pooled over its tokens."""
        from ..runtime.text import PromptTokenizer
        from .text_encoder import tokenizer_file

        ids, mask = PromptTokenizer(tokenizer_file(self.cfg.text), self.cfg.text.max_tokens).encode(texts)
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        tokens = self.text_encoder(ids, mask)                               # [N, L, Dt]
        weights = mask.to(tokens.dtype)[..., None]
        return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def stored_parameter_prefixes(self) -> tuple[str, ...]:
        """Parts whose weights a checkpoint must carry: all but frozen encoders loaded from a source."""
        parts = ["heads."]
        if not self.cfg.audio.source or not self.cfg.audio.frozen:
            parts.append("audio_encoder.")
        if not self.text_encoder.from_source or not self.cfg.text.frozen:
            parts.append("text_encoder.")
        return tuple(parts)

    def num_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"audio_encoder": count(self.audio_encoder), "text_encoder": count(self.text_encoder),
                "heads": count(self.heads), "total": count(self)}
