"""MuQ-compatible audio encoder: mel front-end -> residual Conv2d subsampling -> conformer.

Module and parameter names follow the official MuQ checkpoint (`model.conv.*`,
`model.conformer.*`, the conformer being transformers' Wav2Vec2ConformerEncoder), so
`model.safetensors` of OpenMuQ/MuQ-large-msd-iter loads with strict key checking.

Why our own conformer rather than transformers' class: the numbers are the same for an
unpadded batch (tests/test_audio_encoder.py checks it against transformers), but ours
  - masks padded frames before every depthwise convolution, so a clip scores the same alone
    or padded in a batch (transformers lets padding leak through the convolutions), and
  - has no data-dependent caches or in-place boolean indexing, so it exports to ONNX.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioEncoderConfig
from .frontend import MelFrontEnd, subsampled_frames
from .weights import read_json_file, read_tensors

NEG_INF = -1e4  # additive mask value; finite so that FP16 graphs and all-masked rows stay NaN-free


class Res2dBlock(nn.Module):
    """Residual block (conv-bn-relu-conv-bn + strided shortcut) that zeroes padded time steps."""

    def __init__(self, in_ch: int, out_ch: int, stride=(2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv3 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor, valid_out: torch.Tensor) -> torch.Tensor:
        """x [B, C, F, T] -> [B, C', F/2, T/2]; valid_out [B, T/2] marks real output steps."""
        keep = valid_out[:, None, None, :].to(x.dtype)
        # Zero the padded steps before conv2: a lone clip would see the conv's zero padding there.
        h = F.relu(self.bn1(self.conv1(x))) * keep
        h = self.bn2(self.conv2(h))
        return F.relu(self.bn3(self.conv3(x)) + h) * keep


class ConvSubsampling(nn.Module):
    """Two residual blocks, stride 2 in frequency and time each (100 Hz -> 25 Hz), then Linear."""

    def __init__(self, conv_dim: int, n_mels: int, hidden_size: int):
        super().__init__()
        self.conv = nn.ModuleList([Res2dBlock(1, conv_dim), Res2dBlock(conv_dim, conv_dim)])
        self.linear = nn.Linear(conv_dim * (n_mels // 4), hidden_size)

    def forward(self, mel: torch.Tensor, mel_frames: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, T] -> [B, ceil(ceil(T/2)/2), hidden]."""
        x = mel[:, None]                                        # [B, 1, F, T]
        frames = mel_frames
        for block in self.conv:
            frames = subsampled_frames(frames, 1)
            steps = torch.arange((x.shape[-1] + 1) // 2, device=x.device)
            x = block(x, steps[None, :] < frames[:, None])
        b, c, f, t = x.shape
        x = x.permute(0, 3, 1, 2).reshape(b, t, c * f)           # b c f t -> b t (c f)
        return self.linear(x)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.output_dense(self.dropout(F.silu(self.intermediate_dense(x)))))


def rotary_tables(num_steps: int, head_dim: int, base: float, inv_freq: torch.Tensor):
    """cos, sin [T, 1, 1, head_dim] for rotary position embedding."""
    t = torch.arange(num_steps, device=inv_freq.device, dtype=inv_freq.dtype)
    freqs = t[:, None] * inv_freq[None, :]
    angles = torch.cat([freqs, freqs], dim=-1)[:, None, None, :]
    return angles.cos(), angles.sin()


class SelfAttention(nn.Module):
    """Multi-head self-attention; rotary rotation is applied to the INPUT of the q/k
    projections, as Wav2Vec2Conformer does (and so the MuQ weights expect)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_bias, cos, sin):
        """x [B, T, D]; key_bias [B, 1, 1, T] additive (0 or NEG_INF)."""
        b, t, d = x.shape
        heads = x.view(b, t, self.num_heads, self.head_dim)
        half = self.head_dim // 2
        rotated = torch.cat([-heads[..., half:], heads[..., :half]], dim=-1)
        qk_in = (heads * cos.transpose(0, 1) + rotated * sin.transpose(0, 1)).reshape(b, t, d)
        q = self.linear_q(qk_in).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.linear_k(qk_in).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim ** -0.5 + key_bias
        attn = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, d)   # [B, T, D]
        return self.linear_out(out)


class ConvModule(nn.Module):
    def __init__(self, dim: int, kernel: int, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim, bias=False)
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, keep):
        """x [B, T, D], keep [B, 1, T] float."""
        h = F.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)), dim=1)  # [B, D, T]
        h = F.silu(self.batch_norm(self.depthwise_conv(h * keep)))
        return self.dropout(self.pointwise_conv2(h)).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.ffn1_layer_norm = nn.LayerNorm(d)
        self.ffn1 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.dropout)
        self.self_attn_dropout = nn.Dropout(cfg.dropout)
        self.conv_module = ConvModule(d, cfg.depthwise_kernel, cfg.dropout)
        self.ffn2_layer_norm = nn.LayerNorm(d)
        self.ffn2 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x, key_bias, keep, cos, sin):
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn_dropout(self.self_attn(self.self_attn_layer_norm(x), key_bias, cos, sin))
        x = x + self.conv_module(x, keep)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class WeightNormConv1d(nn.Module):
    """Parameters of the conformer's convolutional position embedding, which MuQ's checkpoint
    carries but Wav2Vec2ConformerEncoder never applies. Kept so strict loading sees them."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.randn(dim, dim // groups, kernel) * 0.02)
        self.bias = nn.Parameter(torch.zeros(dim))


class PositionalConvEmbedding(nn.Module):
    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv = WeightNormConv1d(dim, kernel, groups)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)  # persistent: the MuQ checkpoint has it


class Conformer(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_positions = RotaryEmbedding(cfg.hidden_size // cfg.num_heads, cfg.rotary_base)
        self.pos_conv_embed = PositionalConvEmbedding(cfg.hidden_size, cfg.pos_conv_kernel, cfg.pos_conv_groups)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList([ConformerLayer(cfg) for _ in range(cfg.num_layers)])

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], valid [B, T] bool -> [B, T, D]."""
        keep = valid.to(x.dtype)
        key_bias = ((1.0 - keep) * NEG_INF)[:, None, None, :]          # [B, 1, 1, T]
        cos, sin = rotary_tables(x.shape[1], self.cfg.hidden_size // self.cfg.num_heads,
                                 self.cfg.rotary_base, self.embed_positions.inv_freq)
        x = self.dropout(x * keep[..., None])
        for layer in self.layers:
            x = layer(x, key_bias, keep[:, None, :], cos, sin)
        return self.layer_norm(x)


class AudioEncoder(nn.Module):
    """waveform [B, N] at cfg.sample_rate + lengths [B] -> frames [B, T, D] (25 Hz for MuQ), mask [B, T]."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.frontend = MelFrontEnd(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels,
                                    cfg.mel_mean, cfg.mel_std)
        self.conv = ConvSubsampling(cfg.conv_dim, cfg.n_mels, cfg.hidden_size)
        self.conformer = Conformer(cfg)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel, mel_valid = self.frontend(wave, lengths)                   # [B, M, T4], [B, T4]
        mel_frames = mel_valid.sum(dim=1)
        x = self.conv(mel, mel_frames)                                  # [B, T, D]
        frames = subsampled_frames(mel_frames, 2)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < frames[:, None]
        out = self.conformer(x, valid)
        return out * valid[..., None].to(out.dtype), valid

    def output_frames(self, lengths):
        """Encoder frames for clips of `lengths` samples (ints or a tensor)."""
        return subsampled_frames(lengths // self.cfg.hop_length, 2)


# ---------------------------------------------------------------------------------------------
# Loading the official MuQ checkpoint layout

PREFIX = "model."
USED_PARTS = ("conv.", "conformer.")
WEIGHT_NORM_ALIASES = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def config_from_muq_dir(directory: str | Path, base: AudioEncoderConfig | None = None) -> AudioEncoderConfig:
    """Read MuQ's config.json; its `w2v2_config` becomes a real transformers config."""
    from transformers import Wav2Vec2ConformerConfig

    directory = Path(directory)
    raw = read_json_file(directory / "config.json")
    w2v2 = dict(raw.get("w2v2_config") or {})
    w2v2["hidden_size"] = raw.get("encoder_dim", w2v2.get("hidden_size", 1024))
    w2v2["num_hidden_layers"] = raw.get("encoder_depth", w2v2.get("num_hidden_layers", 12))
    conformer = Wav2Vec2ConformerConfig(**{k: v for k, v in w2v2.items() if k not in ("architectures",)})
    if conformer.position_embeddings_type != "rotary":
        raise ValueError(f"{directory}: position_embeddings_type {conformer.position_embeddings_type!r} "
                         "is not supported (MuQ uses 'rotary')")
    if conformer.hidden_act not in ("swish", "silu"):
        raise ValueError(f"{directory}: hidden_act {conformer.hidden_act!r} is not supported (MuQ uses 'swish')")
    stat = raw.get("stat") or {}
    cfg = base or AudioEncoderConfig()
    return AudioEncoderConfig(
        sample_rate=cfg.sample_rate, n_fft=2048, hop_length=raw.get("hop_length", 240),
        n_mels=raw.get("n_mels", 128),
        mel_mean=float(stat.get("melspec_2048_mean", cfg.mel_mean)),
        mel_std=float(stat.get("melspec_2048_std", cfg.mel_std)),
        conv_dim=raw.get("conv_dim", 512), hidden_size=conformer.hidden_size,
        num_layers=conformer.num_hidden_layers, num_heads=conformer.num_attention_heads,
        ffn_dim=conformer.intermediate_size, depthwise_kernel=conformer.conv_depthwise_kernel_size,
        rotary_base=float(conformer.rotary_embedding_base), layer_norm_eps=conformer.layer_norm_eps,
        dropout=cfg.dropout, pos_conv_kernel=conformer.num_conv_pos_embeddings,
        pos_conv_groups=conformer.num_conv_pos_embedding_groups,
        window_seconds=cfg.window_seconds, frozen=cfg.frozen, source=str(directory),
    )


def muq_state_dict(directory: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The encoder's tensors from model.safetensors, renamed to our keys; plus the ignored keys."""
    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MuQ checkpoint not found (expected config.json + model.safetensors)")
    used, ignored = {}, []
    for key, tensor in read_tensors(path).items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if not name.startswith(USED_PARTS):
            ignored.append(key)
            continue
        for alias, ours in WEIGHT_NORM_ALIASES.items():
            name = name.replace(alias, ours)
        used[name] = tensor
    return used, sorted(ignored)


def load_muq_encoder(directory: str | Path, base: AudioEncoderConfig | None = None) -> tuple[AudioEncoder, list[str]]:
    """Build an AudioEncoder from an official-layout MuQ directory. Missing keys are an error;
    unused ones (quantisers, the codebook projection, cls token) are returned as ignored."""
    cfg = config_from_muq_dir(directory, base)
    encoder = AudioEncoder(cfg)
    tensors, ignored = muq_state_dict(directory)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{directory}: checkpoint does not match the MuQ encoder: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    bad_shapes = [k for k in expected if expected[k].shape != tensors[k].shape]
    if bad_shapes:
        k = bad_shapes[0]
        raise ValueError(f"{directory}: shape mismatch for {k}: checkpoint {tuple(tensors[k].shape)} "
                         f"vs model {tuple(expected[k].shape)}")
    encoder.load_state_dict(tensors, strict=True)
    return encoder, ignored
