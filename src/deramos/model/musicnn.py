"""musicnn (Pons & Serra, MTG-UPF, 2019) in PyTorch, with its log-mel front-end inside.

The network is a port of musicnn's `build_musicnn` (PyPI package musicnn 0.1.0, ISC
licence); the weights in `musicnn_weights/` are its MTT_musicnn and MSD_musicnn checkpoints,
converted by scripts/musicnn_tf.py. Front-end, as musicnn's extractor computes it with
librosa: 16 kHz, centred STFT (n_fft 512, hop 256, zero padding, periodic Hann), power,
96 Slaney mel bands, log10(1 + 10000 * mel), cut into 187-frame (3 s) patches.

Differences from musicnn's extractor, both deliberate:
- the log-mel stays in float32; musicnn rounds the mel to float16 and takes the log there,
  where 10000 * mel overflows to inf on loud tonal music (its taggram becomes NaN);
- the frames after the last full patch are zero-padded to one more patch instead of dropped
  (musicnn pads the same way only when the whole clip is shorter than a patch).

`MusicnnEncoder` is the DeRA-MOS audio encoder: patches every `patch_hop` mel frames, each
patch through one or both backbones, the chosen features of each patch as one frame.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import MUSICNN_SOURCE as WEIGHTS_SOURCE  # noqa: F401  (what cfg.source says)
from .config import AudioEncoderConfig
from .frontend import dft_basis, hann_window, strided_conv1d
from .tempo_tonality import WIDTHS as TEMPO_TONALITY_WIDTHS
from .tempo_tonality import TempoTonality

SAMPLE_RATE, N_FFT, HOP, N_MELS = 16000, 512, 256, 96
PATCH_FRAMES = 187
TIMBRAL_FRAMES = 7      # the timbral filters' extent in time (both of them)
BN_EPS = 1e-3   # tf.compat.v1.layers.batch_normalization's default
# A front-end filter whose output moves by at most this much over every possible input is
# evaluated as the constant it is (see ConvReluBN.split_constant_filters).
CONSTANT_FILTER_TOL = 1e-6
MODELS = ("MTT_musicnn", "MSD_musicnn")
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "musicnn_weights"
# Written by `make musicnn-weights`; checked before the weights are used.
WEIGHTS_SHA256 = {
    "MTT_musicnn": "472ea6898ae1b3ed67b8f67d987f3ab86046aeb0229abdfa83cf5e923d0a2f58",
    "MSD_musicnn": "d22810e1998f6817a009d74d40cd424207bc3a2311e585d1a90018cb47bc3ab1",
}
# Per-patch outputs an encoder can pass on, with their widths.
FEATURES = {"penultimate": 200, "taggram": 50, "mean": 753, "max": 753}

MTT_LABELS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)
MSD_LABELS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy",
)
LABELS = {"MTT_musicnn": MTT_LABELS, "MSD_musicnn": MSD_LABELS}


# --------------------------------------------------------------------------- front-end


def hz_to_mel_slaney(hz):
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    linear = hz * 3.0 / 200.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def mel_to_hz_slaney(mel):
    mel = np.asarray(mel, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * 200.0 / 3.0)


def slaney_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """[n_freqs, n_mels] triangles on the Slaney scale, each scaled to unit area (librosa's default)."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz_slaney(np.linspace(0.0, hz_to_mel_slaney(sample_rate / 2.0), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (fft_hz[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - fft_hz[:, None]) / (upper - centre)[None, :]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return (triangles * (2.0 / (upper - lower))[None, :]).astype(np.float32)


def mel_frames(num_samples, hop: int = HOP):
    """Frames of a centred STFT: 1 + N // hop."""
    return 1 + num_samples // hop


class LogMel(nn.Module):
    """wave [B, N], lengths [B] -> log10(1 + 10000 * mel) [B, 96, 1 + N // 256], valid [B, T].

    Each clip is zero-padded at its own end (samples past its length are zeroed), so it gives
    the same frames alone or in a batch. `use_dft_conv` and `float64` mean what they mean in
    deramos/model/frontend.py: the exportable STFT, and the float64 reference for validation."""

    def __init__(self):
        super().__init__()
        self.use_dft_conv = False
        self.float64 = False
        self.register_buffer("mel_fb", torch.from_numpy(slaney_filterbank()), persistent=False)
        self.register_buffer("window", torch.from_numpy(hann_window(N_FFT).astype(np.float32)), persistent=False)
        self.register_buffer("basis", torch.from_numpy(dft_basis(N_FFT)), persistent=False)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = wave.double() if self.float64 else wave.float()
        inside = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]
        padded = F.pad(wave * inside.to(wave.dtype), (N_FFT // 2, N_FFT // 2))
        power = self._power(padded)                                            # [B, F, T]
        mel = torch.matmul(self.mel_fb.t().to(power.dtype), power)
        log_mel = torch.log10(1.0 + 10000.0 * mel).float()
        positions = torch.arange(log_mel.shape[-1], device=wave.device)
        valid = positions[None, :] < mel_frames(lengths)[:, None]
        return log_mel * valid[:, None, :].to(log_mel.dtype), valid

    def _power(self, padded: torch.Tensor) -> torch.Tensor:
        if self.use_dft_conv:
            basis = self.basis if not self.float64 else torch.from_numpy(dft_basis(N_FFT, np.float64)).to(padded.device)
            real, imag = strided_conv1d(padded, basis, HOP).chunk(2, dim=1)
            return real * real + imag * imag
        window = self.window if not self.float64 else torch.from_numpy(hann_window(N_FFT)).to(padded.device)
        spec = torch.stft(padded, N_FFT, HOP, window=window, center=False, return_complex=True)
        return spec.real.square() + spec.imag.square()


# --------------------------------------------------------------------------- network


def log_mel_max() -> float:
    """The largest log-mel value a wave within [-1, 1] can give: a bin's power is at most
    (sum of the window)^2, a band's mel at most that times its filter's summed weights."""
    band_weight = float(slaney_filterbank().sum(axis=0).max())
    return float(np.log10(1.0 + 10000.0 * band_weight * float(hann_window(N_FFT).sum()) ** 2))


class ConvReluBN(nn.Module):
    """musicnn's conv -> ReLU -> batch norm (in that order); 2-D or 1-D."""

    def __init__(self, conv: nn.Module, channels: int, two_d: bool):
        super().__init__()
        self.conv = conv
        self.bn = (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(channels, eps=BN_EPS)
        # set by split_constant_filters; persistent, so that an ONNX export holds them as
        # initializers like the weights they come from (INT8 finds its GEMMs' weights there)
        for name in ("order", "live_sign", "live_weight", "live_bias", "constant_bias"):
            self.register_buffer(name, None)

    def forward(self, x):
        return self.bn(F.relu(self.conv(x)))

    def split_constant_filters(self, input_bound: float,
                               tol: float = CONSTANT_FILTER_TOL) -> tuple[torch.Tensor, torch.Tensor]:
        """Mark the filters whose output is a constant to within `tol` for every input with
        |x| <= input_bound, so that eval runs only the others (_extreme_over_frequency);
        -> (live channels, constant channels).

        musicnn's training decayed most front-end filters to ~1e-7 (MSD: 371 of 408 timbral
        filters): their convolution is the bias plus at most ||w||_1 * input_bound, ReLU and the
        max over frequency do not widen that, batch norm scales it by |gamma| / sqrt(var + eps).
        The bound holds for any input, so no clip can tell the split from the full network by
        more than `tol` per front-end output. The parameters stay whole (training, state dicts)."""
        weight, bias = self.conv.weight.detach(), self.conv.bias.detach()
        scale = (self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)).detach()
        bound = scale.abs() * weight.flatten(1).abs().sum(dim=1) * input_bound
        live, constant = torch.nonzero(bound > tol).flatten(), torch.nonzero(bound <= tol).flatten()
        # the live outputs, then the constant ones, put back in channel order by one gather
        self.order = torch.argsort(torch.cat([live, constant]))
        self.live_sign = torch.where(scale[live] < 0, -1.0, 1.0)     # see _extreme_over_frequency
        self.live_weight = weight[live] * self.live_sign.view(-1, *[1] * (weight.dim() - 1))
        self.live_bias = bias[live] * self.live_sign
        self.constant_bias = bias[constant].clone()
        return live, constant


def _frontend_block(filters: int, kernel: tuple[int, int]) -> ConvReluBN:
    return ConvReluBN(nn.Conv2d(1, filters, kernel), filters, two_d=True)


def _midend_block(in_ch: int) -> ConvReluBN:
    return ConvReluBN(nn.Conv1d(in_ch, 64, 7, padding=3), 64, two_d=False)


class Musicnn(nn.Module):
    """log-mel patches [P, 187, 96] -> per-patch outputs (see FEATURES and `forward`).

    Front-end: timbral filters spanning 7 frames x 40 % / 70 % of the mel bands, temporal
    filters spanning 128/64/32 frames x 1 band, each max-pooled over frequency; mid-end: three
    1-D convolutions with residual connections; back-end: max and mean over time, dense layers."""

    def __init__(self, num_classes: int = 50):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        self.timbral_74 = _frontend_block(204, (TIMBRAL_FRAMES, int(0.4 * N_MELS)))
        self.timbral_77 = _frontend_block(204, (TIMBRAL_FRAMES, int(0.7 * N_MELS)))
        self.temporal_128 = _frontend_block(51, (128, 1))
        self.temporal_64 = _frontend_block(51, (64, 1))
        self.temporal_32 = _frontend_block(51, (32, 1))
        self.mid1, self.mid2, self.mid3 = _midend_block(561), _midend_block(64), _midend_block(64)
        self.pool_bn = nn.BatchNorm1d(1506, eps=BN_EPS)
        self.dense = nn.Linear(1506, 200)
        self.dense_bn = nn.BatchNorm1d(200, eps=BN_EPS)
        self.output = nn.Linear(200, num_classes)
        for name in ("mid1_live", "mid1_live_weight", "mid1_fixed"):
            self.register_buffer(name, None)      # set by split_constant_filters, as the blocks' are

    def train(self, mode: bool = True):
        """Going to eval mode re-derives the split from the weights, which training may have moved."""
        super().train(mode)
        if not mode:
            self.split_constant_filters()
        return self

    def front_end_blocks(self) -> tuple[ConvReluBN, ...]:
        return (self.timbral_74, self.timbral_77, self.temporal_128, self.temporal_64, self.temporal_32)

    def split_constant_filters(self, tol: float = CONSTANT_FILTER_TOL) -> None:
        """Evaluate the front-end filters that are constants to within `tol` as constants
        (ConvReluBN.split_constant_filters); eval() calls it, after the weights are loaded. Their input is
        the batch-normed log-mel, within input_bn(0) .. input_bn(log_mel_max())."""
        bn = self.input_bn
        ends = torch.tensor([0.0, log_mel_max()], dtype=bn.running_mean.dtype, device=bn.running_mean.device)
        normed = (ends - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        bound = float(normed.detach().abs().max())
        self._split_mid1_inputs([block.split_constant_filters(bound, tol) for block in self.front_end_blocks()])

    def _split_mid1_inputs(self, splits: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """mid1 reads the 561 front-end channels. The constant ones add the same [64, 187] term to
        every patch (the same in every frame but the 3 at each end, where mid1's zero padding cuts
        them off), so mid1 convolves only the live channels and adds that term. `splits`: each
        front-end block's (live, constant) channels, in order."""
        live, constant, values = [], [], []
        offset = 0
        for block, (block_live, block_constant) in zip(self.front_end_blocks(), splits):
            live.append(block_live + offset)
            constant.append(block_constant + offset)
            bn = block.bn
            values.append(F.batch_norm(F.relu(block.constant_bias)[None], bn.running_mean[block_constant],
                                       bn.running_var[block_constant], bn.weight[block_constant],
                                       bn.bias[block_constant], False, 0.0, bn.eps)[0])
            offset += block.conv.weight.shape[0]
        live, constant, values = torch.cat(live), torch.cat(constant), torch.cat(values).detach()
        weight, bias = self.mid1.conv.weight.detach(), self.mid1.conv.bias.detach()
        steady = values[None, :, None].expand(1, -1, PATCH_FRAMES).double()    # a sum of ~500 channels: float64
        self.mid1_live = live
        self.mid1_live_weight = weight[:, live].clone()
        self.mid1_fixed = F.conv1d(steady, weight[:, constant].double(), bias.double(), padding=3)[0].to(weight.dtype)

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.input_bn(patches[:, None])                                    # [P, 1, 187, 96]
        front = [self._pool_frequency(block, x, pad) for block, pad in (
            (self.timbral_74, (3, 3)), (self.timbral_77, (3, 3)),
            (self.temporal_128, (63, 64)), (self.temporal_64, (31, 32)), (self.temporal_32, (15, 16)))]
        return self._mid_and_back_end(torch.cat(front, dim=1))                # [P, 561, 187] in

    def forward_clip(self, log_mel: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """log-mel [B, T, 96], patch index [P, 187] into T + 187 frames (past T: the zero padding)
        -> forward() of the B*P patches, clip-major, without cutting the patches out for the
        timbral filters.

        Patches overlap by half, so cut out, every mel frame went through the timbral filters
        (7 frames x 40 / 70 % of the bands: 80 % of the FLOPs) twice. Here those filters run once
        over the clip; a patch takes its inner frames from there and recomputes only its 3 + 3
        edge frames, where its own zero padding differs from the clip's neighbours. Past the
        clip's end every 7-frame window holds only padding and gives one output, computed once.
        The numbers are forward()'s up to float rounding (eval mode only: training takes batch
        norm statistics over the patches)."""
        if self.training:
            raise RuntimeError("forward_clip is for eval mode; train on patches with forward()")
        x = self.input_bn(log_mel[:, None])                                    # [B, 1, T, 96]
        fill = self.input_bn(log_mel.new_zeros(1, 1, 1, N_MELS))               # what a zero frame becomes
        b, (p, width) = x.shape[0], index.shape
        padded = torch.cat([x, fill.expand(b, 1, PATCH_FRAMES, N_MELS)], dim=2)   # [B, 1, T + 187, 96]
        patches = padded[:, :, index].transpose(1, 2).reshape(b * p, 1, width, N_MELS)   # [B*P, 1, 187, 96]
        front = [self._pool_frequency_shared(block, x, fill, patches, index) for block in (self.timbral_74, self.timbral_77)]
        front += [self._pool_frequency(block, patches, pad) for block, pad in (
            (self.temporal_128, (63, 64)), (self.temporal_64, (31, 32)), (self.temporal_32, (15, 16)))]
        return self._mid_and_back_end(torch.cat(front, dim=1))

    def _mid_and_back_end(self, front: torch.Tensor) -> dict[str, torch.Tensor]:
        """Front-end features [P, 561, 187] -> per-patch outputs."""
        if self.training or self.mid1_live is None:
            mid1 = self.mid1(front)
        else:       # the live channels only, the constant ones' fixed term added (_split_mid1_inputs)
            bn = self.mid1.bn
            pre = F.conv1d(front[:, self.mid1_live], self.mid1_live_weight, None, padding=3) + self.mid1_fixed
            mid1 = F.batch_norm(F.relu(pre), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        mid2 = self.mid2(mid1) + mid1
        mid3 = self.mid3(mid2) + mid2
        midend = torch.cat([front, mid1, mid2, mid3], dim=1)                   # [P, 753, 187]
        highest, mean = midend.amax(dim=2), midend.mean(dim=2)
        # TF flattens [P, 753, (max, mean)]: the two pools interleave channel by channel.
        pooled = torch.stack([highest, mean], dim=-1).reshape(front.shape[0], -1)
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return {"taggram": torch.sigmoid(self.output(penultimate)), "penultimate": penultimate,
                "mean": mean, "max": highest, "pooled": pooled}

    @staticmethod
    def _pool_frequency_shared(block: ConvReluBN, clip: torch.Tensor, fill: torch.Tensor, patches: torch.Tensor,
                               index: torch.Tensor) -> torch.Tensor:
        """A 7-frame timbral block over the clip [B, 1, T, 96] once -> [B*P, C, 187] per patch;
        `fill` [1, 1, 1, 96] is a padding frame, as the patches past T hold it."""
        edge = TIMBRAL_FRAMES // 2                                             # 3
        b, (p, width) = clip.shape[0], index.shape
        # Outputs 0 .. T+2 see the clip; every later one sees 7 padding frames, the same for all.
        head = torch.cat([F.pad(clip, (0, 0, edge, 0)), fill.expand(b, 1, 2 * edge, N_MELS)], dim=2)
        inside = Musicnn._extreme_over_frequency(block, head)                  # [B, C, T + 3]
        beyond = Musicnn._extreme_over_frequency(block, fill.expand(1, 1, TIMBRAL_FRAMES, N_MELS))   # [1, C, 1]
        whole = torch.cat([inside, beyond.expand(b, -1, PATCH_FRAMES - edge)], dim=2)   # [B, C, T + 187]
        inner = whole[:, :, index[:, edge:width - edge]]                       # [B, C, P, 181]
        inner = inner.transpose(1, 2).reshape(b * p, whole.shape[1], width - 2 * edge)
        left = Musicnn._extreme_over_frequency(block, F.pad(patches[:, :, : 2 * edge], (0, 0, edge, 0)))
        right = Musicnn._extreme_over_frequency(block, F.pad(patches[:, :, width - 2 * edge:], (0, 0, 0, edge)))
        return torch.cat([left, inner, right], dim=2)

    @staticmethod
    def _pool_frequency(block: ConvReluBN, x: torch.Tensor, time_pad: tuple[int, int]) -> torch.Tensor:
        """Zero-pad time ('same' as TF pads it), convolve, max over frequency -> [P, C, 187]."""
        x = F.pad(x, (0, 0, *time_pad))
        if block.training:   # batch statistics would be taken over the unpooled output
            return block(x).amax(dim=3)
        return Musicnn._extreme_over_frequency(block, x)

    @staticmethod
    def _extreme_over_frequency(block: ConvReluBN, x: torch.Tensor) -> torch.Tensor:
        """block(x).amax(dim=3) in eval mode, for x already padded in time.

        The max is taken before ReLU and batch norm, on [P, C, T] instead of the [P, C, T, F]
        convolution output (most of the front-end's time went there). ReLU and a per-channel
        affine map are monotone, so the result is the same: channels whose batch norm scales by
        a negative factor take the minimum instead, found as the max of the convolution with
        negated weights (negation is exact in floating point)."""
        bn, conv = block.bn, block.conv
        if block.order is None:
            sign = torch.where(bn.weight * torch.rsqrt(bn.running_var + bn.eps) < 0, -1.0, 1.0).to(x.dtype)
            flipped = F.conv2d(x, conv.weight * sign[:, None, None, None], conv.bias * sign)
            extreme = flipped.amax(dim=3) * sign[None, :, None]      # max (or min) over frequency
        else:       # only the filters that are not constants (split_constant_filters), signs folded in
            flipped = F.conv2d(x, block.live_weight, block.live_bias)
            live = flipped.amax(dim=3) * block.live_sign[None, :, None]          # [P, L, T]
            constant = block.constant_bias[None, :, None].expand(live.shape[0], -1, live.shape[2])
            extreme = torch.cat([live, constant], dim=1)[:, block.order]
        return F.batch_norm(F.relu(extreme), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def check_weights(model: str, directory: Path = WEIGHTS_DIR) -> Path:
    """The shipped weights of `model`, after checking their sha256."""
    if model not in WEIGHTS_SHA256:
        raise ValueError(f"unknown musicnn model {model!r}; choose from {list(MODELS)}")
    path = Path(directory) / f"{model}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: musicnn weights missing (make musicnn-weights writes them)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256[model]:
        raise ValueError(f"{path}: sha256 {digest} does not match the converted weights "
                         f"({WEIGHTS_SHA256[model]})")
    return path


def load_musicnn(model: str) -> Musicnn:
    from safetensors.torch import load_file

    network = Musicnn(num_classes=len(LABELS[model]) if model in LABELS else 50)
    network.load_state_dict(load_file(str(check_weights(model))), strict=True)
    return network.eval()      # eval() splits off the constant filters


# --------------------------------------------------------------------------- encoder


class MusicnnEncoder(nn.Module):
    """DeRA-MOS audio encoder: wave [B, N] at 16 kHz + lengths -> frames [B, P, D], mask [B, P].

    One frame per 187-frame patch, patches starting every `cfg.patch_hop` mel frames; a patch
    is real when it starts inside the clip. D is the chosen features of every backbone, in
    order, then the chosen tempo/tonality features of the patch (deramos/model/tempo_tonality.py)."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.network_features = tuple(f for f in cfg.features if f in FEATURES)
        self.extra_features = tuple(f for f in cfg.features if f in TEMPO_TONALITY_WIDTHS)
        unknown = [f for f in cfg.features if f not in FEATURES and f not in TEMPO_TONALITY_WIDTHS]
        if not cfg.backbones or not self.network_features or unknown:
            raise ValueError(f"musicnn encoder needs backbones from {list(MODELS)} and features from "
                             f"{list(FEATURES)}, optionally also {list(TEMPO_TONALITY_WIDTHS)} "
                             f"(got {list(cfg.backbones)}, {list(cfg.features)})")
        if cfg.sample_rate != SAMPLE_RATE or cfg.patch_hop < 1:
            raise ValueError(f"musicnn encoder needs sample_rate {SAMPLE_RATE} and patch_hop >= 1 "
                             f"(got {cfg.sample_rate}, {cfg.patch_hop})")
        self.cfg = cfg
        self.frontend = LogMel()
        self.backbones = nn.ModuleDict({name: load_musicnn(name) for name in cfg.backbones})
        self.tempo_tonality = TempoTonality(self.extra_features) if self.extra_features else None
        cfg.hidden_size = (len(cfg.backbones) * sum(FEATURES[f] for f in self.network_features)
                           + (self.tempo_tonality.width if self.tempo_tonality is not None else 0))

    def tags(self) -> list[tuple[str, int]]:
        """(tag name, its position in a frame) for every taggram output: what the frames name."""
        tags, offset = [], 0
        for name in self.cfg.backbones:
            for feature in self.network_features:
                if feature == "taggram":
                    tags += [(label, offset + i) for i, label in enumerate(LABELS[name])]
                offset += FEATURES[feature]
        return tags

    def patch_index(self, num_frames: int, device) -> torch.Tensor:
        """[P, 187]: the mel frames of each patch (past the end they index the zero padding)."""
        hop = self.cfg.patch_hop
        starts = torch.arange((num_frames + hop - 1) // hop, device=device) * hop
        return starts[:, None] + torch.arange(PATCH_FRAMES, device=device)[None, :]

    def patches(self, log_mel: torch.Tensor, valid: torch.Tensor,
                index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 96, T], patch index [P, 187] -> patches [B, P, 187, 96], real [B, P]; gathers keep it exportable."""
        padded = F.pad(log_mel, (0, PATCH_FRAMES))                           # every patch fits
        patches = padded[:, :, index].permute(0, 2, 3, 1)                    # [B, P, 187, 96]
        return patches, index[None, :, 0] < valid.sum(dim=1, keepdim=True)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_mel, valid = self.frontend(wave, lengths)
        index = self.patch_index(log_mel.shape[-1], log_mel.device)
        patches, real = self.patches(log_mel, valid, index)
        b, p = real.shape
        clip = log_mel.transpose(1, 2)                                         # [B, T, 96]
        parts = []
        for network in self.backbones.values():
            # eval: the timbral filters run once per mel frame, not once per patch it is in
            outputs = (network(patches.reshape(b * p, PATCH_FRAMES, N_MELS)) if network.training
                       else network.forward_clip(clip, index))
            parts += [outputs[name].reshape(b, p, -1) for name in self.network_features]
        if self.tempo_tonality is not None:
            parts.append(self.tempo_tonality(wave, lengths, log_mel, valid, index))
        frames = torch.cat(parts, dim=-1)
        return frames * real[..., None].to(frames.dtype), real

    def output_frames(self, lengths):
        """Encoder frames (patches) for clips of `lengths` samples."""
        return (mel_frames(lengths) + self.cfg.patch_hop - 1) // self.cfg.patch_hop
