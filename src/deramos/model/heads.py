"""DeRA-MOS heads: the MI branch and the decoupled TA branch.

MI: encoder frames -> sinusoidal positions -> 1 transformer layer -> attentive pooling -> MLP
    -> softmax over K score bins -> expected score.
TA: the RAW encoder frames (not the MI transformer's output) and the text tokens, each
    projected to ta_dim; cross-attention with text as query and audio as key/value ->
    LayerNorm -> attentive pooling over the real (unpadded) text tokens -> MLP -> K bins.
    With grounding (cfg.ta_grounding > 0; musicnn's taggram in the frames): the prompt's
    cosine similarity to each tag name, beside the clip's mean tag probabilities, joins the
    MLP's input, so a word training never saw still lands on a tag the audio confirms or denies.
Alignment embeddings (training only): attentive pooling of the projected audio frames and
the masked mean of the projected text tokens.

Every reduction over time or tokens is masked, so padding never changes an output.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import HeadsConfig

NEG_INF = -1e4


def sinusoidal_positions(num_steps: int, dim: int, device, dtype) -> torch.Tensor:
    """[T, dim] sin/cos positions, as in "Attention is all you need"."""
    position = torch.arange(num_steps, device=device, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = position * rate[None, :]                                   # [T, dim/2]
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(num_steps, -1)[:, :dim]
    return table.to(dtype)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(logits.masked_fill(~mask, NEG_INF), dim=dim)


class MultiHeadAttention(nn.Module):
    """Plain multi-head attention with a key padding mask (True = real)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, kv_dim: int | None = None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim or dim, dim)
        self.v = nn.Linear(kv_dim or dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query, key_value, key_mask):
        b, lq, d = query.shape
        lk = key_value.shape[1]
        q = self.q(query).view(b, lq, self.num_heads, self.head_dim).transpose(1, 2)     # [B, H, Lq, hd]
        k = self.k(key_value).view(b, lk, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(key_value).view(b, lk, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim ** -0.5            # [B, H, Lq, Lk]
        attn = self.dropout(masked_softmax(scores, key_mask[:, None, None, :], dim=-1))
        return self.out(torch.matmul(attn, v).transpose(1, 2).reshape(b, lq, d))


class TransformerLayer(nn.Module):
    """Post-norm encoder layer (as torch.nn.TransformerEncoderLayer): FF 2*d, ReLU."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = self.norm1(x + self.dropout(self.attn(x, x, mask)))
        return self.norm2(x + self.dropout(self.ff(x)))


class AttentivePooling(nn.Module):
    """Linear -> softmax over the real steps -> weighted sum."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x, mask):
        weights = masked_softmax(self.score(x).squeeze(-1), mask, dim=-1)    # [B, T]
        return torch.einsum("bt,btd->bd", weights, x)


def mlp(dims: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class ScoreBins(nn.Module):
    """Softmax over K bins at linspace(min, max, K); the score is the expectation."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.register_buffer("centres", torch.linspace(cfg.score_min, cfg.score_max, cfg.num_bins),
                             persistent=False)

    def forward(self, logits):
        dist = torch.softmax(logits.float(), dim=-1)
        return (dist * self.centres).sum(-1), dist


class MIBranch(nn.Module):
    def __init__(self, audio_dim: int, cfg: HeadsConfig):
        super().__init__()
        self.transformer = TransformerLayer(audio_dim, cfg.mi_heads, cfg.mi_dropout)
        self.pool = AttentivePooling(audio_dim)
        self.mlp = mlp([audio_dim, *cfg.mi_mlp, cfg.num_bins], cfg.mlp_dropout)

    def forward(self, frames, frame_mask):
        x = frames + sinusoidal_positions(frames.shape[1], frames.shape[2], frames.device, frames.dtype)
        x = self.transformer(x, frame_mask)
        return self.mlp(self.pool(x, frame_mask))                           # [B, K] logits


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D], [B, T] bool -> [B, D]: the mean over the real steps."""
    weights = mask.to(x.dtype)[..., None]
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TagGrounding(nn.Module):
    """Prompt-to-tag similarity [B, N] next to the clip's tag probabilities [B, N] -> [B, out].

    tag_index: where the N tag probabilities sit in an encoder frame; tag_embeddings [N, Dt]:
    each tag name through the frozen text encoder, mean-pooled and L2-normalised (as the
    prompt is here), set once by `set_tag_embeddings` and stored with the heads."""

    def __init__(self, tag_index: list[int], text_dim: int, out_dim: int):
        super().__init__()
        self.register_buffer("tag_index", torch.tensor(tag_index, dtype=torch.long))
        self.register_buffer("tag_embeddings", torch.zeros(len(tag_index), text_dim))
        self.proj = nn.Sequential(nn.Linear(3 * len(tag_index), out_dim), nn.ReLU())

    def set_tag_embeddings(self, embeddings: torch.Tensor) -> None:
        self.tag_embeddings.copy_(nn.functional.normalize(embeddings.float(), dim=-1))

    def forward(self, frames, frame_mask, tokens, token_mask):
        probs = masked_mean(frames[..., self.tag_index], frame_mask)         # [B, N]
        prompt = nn.functional.normalize(masked_mean(tokens, token_mask), dim=-1)
        similarity = prompt @ self.tag_embeddings.t()                        # [B, N]
        return self.proj(torch.cat([similarity * probs, similarity, probs], dim=-1))


class TABranch(nn.Module):
    def __init__(self, audio_dim: int, text_dim: int, cfg: HeadsConfig, tag_index: list[int] | None = None):
        super().__init__()
        d = cfg.ta_dim
        self.audio_proj = nn.Linear(audio_dim, d)
        self.text_proj = nn.Linear(text_dim, d)
        self.cross_attn = MultiHeadAttention(d, cfg.ta_heads, cfg.mlp_dropout)
        self.norm = nn.LayerNorm(d)
        self.pool = AttentivePooling(d)
        self.grounding = None
        if cfg.ta_grounding:
            if not tag_index:
                raise ValueError("TA grounding needs tag probabilities in the encoder frames "
                                 "(a musicnn encoder with the taggram feature)")
            self.grounding = TagGrounding(tag_index, text_dim, cfg.ta_grounding)
        self.mlp = mlp([d + cfg.ta_grounding, *cfg.ta_mlp, cfg.num_bins], cfg.mlp_dropout)
        self.align_audio_pool = AttentivePooling(d)

    def forward(self, frames, frame_mask, tokens, token_mask):
        audio = self.audio_proj(frames)                                      # [B, T, d]
        text = self.text_proj(tokens)                                        # [B, L, d]
        fused = self.norm(text + self.cross_attn(text, audio, frame_mask))   # [B, L, d]
        pooled = self.pool(fused, token_mask)                                # [B, d]
        if self.grounding is not None:
            pooled = torch.cat([pooled, self.grounding(frames, frame_mask, tokens, token_mask)], dim=-1)
        logits = self.mlp(pooled)                                            # [B, K]
        audio_emb = self.align_audio_pool(audio, frame_mask)                 # [B, d]
        return logits, audio_emb, masked_mean(text, token_mask)


class Heads(nn.Module):
    def __init__(self, audio_dim: int, text_dim: int, cfg: HeadsConfig, tag_index: list[int] | None = None):
        super().__init__()
        self.mi = MIBranch(audio_dim, cfg)
        self.ta = TABranch(audio_dim, text_dim, cfg, tag_index)
        self.bins = ScoreBins(cfg)

    def forward(self, frames, frame_mask, tokens, token_mask) -> dict[str, torch.Tensor]:
        """frames [B, T, Da], frame_mask [B, T] bool, tokens [B, L, Dt], token_mask [B, L] bool."""
        frame_mask, token_mask = frame_mask.bool(), token_mask.bool()
        mi_logits = self.mi(frames, frame_mask)
        ta_logits, audio_emb, text_emb = self.ta(frames, frame_mask, tokens, token_mask)
        mi, mi_dist = self.bins(mi_logits)
        ta, ta_dist = self.bins(ta_logits)
        return {"mi": mi, "ta": ta, "mi_dist": mi_dist, "ta_dist": ta_dist,
                "mi_logits": mi_logits, "ta_logits": ta_logits,
                "audio_emb": audio_emb, "text_emb": text_emb}

