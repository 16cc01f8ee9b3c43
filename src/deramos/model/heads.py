"""DeRA-MOS heads: the MI branch and the decoupled TA branch.

MI: encoder frames -> sinusoidal positions -> 1 transformer layer -> attentive pooling -> MLP
    -> softmax over K score bins -> expected score.
TA: the RAW encoder frames (not the MI transformer's output) and the text tokens, each
    projected to ta_dim; cross-attention with text as query and audio as key/value ->
    LayerNorm -> attentive pooling over the real (unpadded) text tokens -> MLP -> K bins.
    With grounding (cfg.ta_grounding > 0; musicnn's taggram in the frames): the prompt's
    cosine similarity to each tag name, beside the clip's mean tag probabilities, joins the
    MLP's input, so a word training never saw still lands on a tag the audio confirms or denies.
TA by attributes (cfg.ta_attributes, a vocabulary kind -> values): instead of cross-attention,
    an AttributeReader says per kind what the clip has (from its mean frame) and what the prompt
    asserts (from its mean token), and whether the prompt is about music at all; the MLP weighs
    per kind "asserted" and "asserted and heard" -> K bins. The reader is fitted on its own
    labels first (training/attribute_fit.py), then frozen.
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


class AttributeReader(nn.Module):
    """Per attribute kind: what the clip has and what the prompt asserts, in one vocabulary.

    vocabulary: kind -> values. "instrument" lists families, several of which can sound at once
    (a sigmoid each); every other kind holds one value (a softmax). Audio: the clip's mean frame,
    standardised by the fitted audio_mean/audio_scale -> a linear map per kind. Text: the
    prompt's mean token -> one hidden layer -> whether the prompt is about music, whether it names
    an instrument and which families, and per other kind a softmax whose first class is "not said".
    """

    def __init__(self, audio_dim: int, text_dim: int, vocabulary: dict[str, list[str]], hidden: int = 256):
        super().__init__()
        if not vocabulary.get("instrument"):
            raise ValueError("TA attributes: the vocabulary needs the instrument families")
        # sorted: a config's JSON is written with sorted keys, and the MLP's input order must not
        # depend on the order the vocabulary was given in
        self.kinds = sorted(k for k in vocabulary if k != "instrument")
        families = len(vocabulary["instrument"])
        self.register_buffer("audio_mean", torch.zeros(audio_dim))
        self.register_buffer("audio_scale", torch.ones(audio_dim))
        self.audio_families = nn.Linear(audio_dim, families)
        self.audio_kinds = nn.ModuleDict({k: nn.Linear(audio_dim, len(vocabulary[k])) for k in self.kinds})
        self.text_body = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU())
        self.text_music = nn.Linear(hidden, 1)
        self.text_instrument = nn.Linear(hidden, 1)
        self.text_families = nn.Linear(hidden, families)
        self.text_kinds = nn.ModuleDict({k: nn.Linear(hidden, 1 + len(vocabulary[k])) for k in self.kinds})

    def audio_logits(self, frames, frame_mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> family logits [B, F], {kind: value logits [B, V]}."""
        clip = (masked_mean(frames, frame_mask) - self.audio_mean) / self.audio_scale     # [B, Da]
        return self.audio_families(clip), {k: head(clip) for k, head in self.audio_kinds.items()}

    def text_logits(self, tokens, token_mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """-> music [B], instrument named [B], family logits [B, F], {kind: [B, 1 + V]}."""
        hidden = self.text_body(masked_mean(tokens, token_mask))
        return (self.text_music(hidden)[:, 0], self.text_instrument(hidden)[:, 0], self.text_families(hidden),
                {k: head(hidden) for k, head in self.text_kinds.items()})

    def forward(self, frames, frame_mask, tokens, token_mask) -> dict[str, torch.Tensor]:
        """asserted [B, K] (instrument first): P(the prompt names the kind); heard [B, K]: the
        clip's probability of what it names; music [B]; audio/text [B, E]: the two sides' value
        probabilities in one layout (for the alignment loss)."""
        audio_families, audio_kinds = self.audio_logits(frames, frame_mask)
        music, instrument, text_families, text_kinds = self.text_logits(tokens, token_mask)
        has, named = torch.sigmoid(audio_families), torch.sigmoid(text_families)       # [B, F]
        asserted = [torch.sigmoid(instrument)]
        # at least 1 below: a prompt naming an instrument of no family ("a sitar") is not heard
        heard = [(has * named).sum(-1) / named.sum(-1).clamp(min=1.0)]
        audio_side, text_side = [has], [named]
        for kind in self.kinds:
            says = torch.softmax(text_kinds[kind], dim=-1)                   # [B, 1 + V]
            holds = torch.softmax(audio_kinds[kind], dim=-1)                 # [B, V]
            asserted.append(1.0 - says[:, 0])
            heard.append((says[:, 1:] * holds).sum(-1) / (says[:, 1:].sum(-1) + 1e-3))
            audio_side.append(holds)
            text_side.append(says[:, 1:])
        return {"asserted": torch.stack(asserted, -1), "heard": torch.stack(heard, -1),
                "music": torch.sigmoid(music), "audio": torch.cat(audio_side, -1), "text": torch.cat(text_side, -1)}


class AttributeTABranch(nn.Module):
    """TA from the AttributeReader: per kind "asserted" and "asserted and heard" (both times the
    prompt's probability of being about music), that probability, and the share of what it
    asserts that the clip has -> MLP -> K bins."""

    def __init__(self, audio_dim: int, text_dim: int, cfg: HeadsConfig):
        super().__init__()
        self.reader = AttributeReader(audio_dim, text_dim, cfg.ta_attributes)
        kinds = 1 + len(self.reader.kinds)
        self.mlp = mlp([2 * kinds + 3, *cfg.ta_mlp, cfg.num_bins], cfg.mlp_dropout)

    def forward(self, frames, frame_mask, tokens, token_mask):
        read = self.reader(frames, frame_mask, tokens, token_mask)
        music = read["music"]                                                # [B]
        asserted = read["asserted"] * music[:, None]   # what a prompt about no music names counts for nothing
        both = asserted * read["heard"]                                      # [B, K]
        share = both.sum(-1) / (asserted.sum(-1) + 1e-3)                     # [B]
        features = torch.cat([asserted, both, music[:, None], share[:, None], (music * share)[:, None]], -1)
        return self.mlp(features), read["audio"], read["text"]


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
        self.ta = (AttributeTABranch(audio_dim, text_dim, cfg) if cfg.ta_attributes
                   else TABranch(audio_dim, text_dim, cfg, tag_index))
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

