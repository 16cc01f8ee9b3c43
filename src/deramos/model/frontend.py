"""Log-mel front-end, MuQ-style, written so it exports to ONNX/TensorRT.

Power mel spectrogram: Hann window (periodic), n_fft, hop, centre/reflect padding, HTK mel
scale without filter normalisation, last frame dropped; then 10*log10(max(P, 1e-10)) and
(x - mean) / std with the checkpoint's statistics.

Two STFT paths compute the same thing:
- `torch.stft` (FFT) for training, where speed matters;
- a Conv1d with a fixed windowed-DFT basis for export, because ONNX's STFT op does not run
  in TensorRT. `MelFrontEnd.use_dft_conv` selects it.

Batches of clips with different lengths are exact: each clip is reflect-padded at ITS OWN
end (a gather with per-clip indices), so a clip gives the same frames alone or in a batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def strided_conv1d(signal: torch.Tensor, kernels: torch.Tensor, hop: int) -> torch.Tensor:
    """F.conv1d(signal[:, None], kernels, stride=hop): signal [B, L], kernels [C, 1, W] -> [B, C, T].

    When W is a multiple of the hop, the signal is cut into hops first and the kernels into W / hop
    taps of `hop` channels: the same sums as one long kernel at a stride, but an ordinary
    convolution over many channels, which ONNX Runtime runs at its matmul rate (a one-channel,
    long-stride convolution ran at half of it: 7.0 -> 4.6 ms for the 106 pitch kernels over two
    10 s windows)."""
    width = kernels.shape[-1]
    if width % hop:
        return F.conv1d(signal[:, None, :], kernels, stride=hop)
    taps = width // hop
    frames = (signal.shape[1] - width) // hop + 1
    signal = signal[:, : (frames + taps - 1) * hop]                              # whole hops: the rest is never read
    hops = signal.reshape(signal.shape[0], -1, hop).transpose(1, 2)             # [B, hop, T + taps - 1]
    return F.conv1d(hops, kernels.reshape(kernels.shape[0], taps, hop).transpose(1, 2))


def hz_to_mel_htk(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz_htk(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular HTK mel filters [n_freqs, n_mels], no area normalisation, 0 Hz .. Nyquist."""
    n_freqs = n_fft // 2 + 1
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_freqs)
    mel_points = np.linspace(hz_to_mel_htk(0.0), hz_to_mel_htk(sample_rate / 2.0), n_mels + 2)
    hz_points = mel_to_hz_htk(mel_points)
    lower, centre, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    rising = (fft_hz[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - fft_hz[:, None]) / (upper - centre)[None, :]
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann (what torch.hann_window and librosa's STFT use)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float64)


def dft_basis(n_fft: int, dtype=np.float32) -> np.ndarray:
    """[2 * n_freqs, 1, n_fft]: windowed cos rows then windowed -sin rows."""
    n_freqs = n_fft // 2 + 1
    k = np.arange(n_freqs)[:, None]
    n = np.arange(n_fft)[None, :]
    angle = 2.0 * np.pi * k * n / n_fft
    window = hann_window(n_fft)[None, :]
    basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window], axis=0)
    return basis[:, None, :].astype(dtype)


def frame_count(num_samples: torch.Tensor | int, hop_length: int):
    """Mel frames of a clip: 1 + N // hop from centring, minus the dropped last frame."""
    return num_samples // hop_length


class MelFrontEnd(nn.Module):
    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
                 mean: float, std: float):
        super().__init__()
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        self.mean, self.std = float(mean), float(std)
        self.use_dft_conv = False
        # float64 (window and DFT basis too) makes this the exact model, up to the float32 mel
        # weights: the reference exported graphs are validated against.
        self.float64 = False
        # Buffers are derived from the config, so they are not part of the state dict.
        self.register_buffer("mel_fb", torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)),
                             persistent=False)
        self.register_buffer("window", torch.from_numpy(hann_window(n_fft).astype(np.float32)),
                             persistent=False)
        self.register_buffer("basis", torch.from_numpy(dft_basis(n_fft)), persistent=False)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave [B, N] float, lengths [B] int -> normalised log-mel [B, n_mels, T], valid [B, T] bool.

        Frames past a clip's own length are zeroed (the value single-clip padding would give).
        """
        wave = wave.double() if self.float64 else wave.float()
        padded = self._reflect_pad_per_clip(wave, lengths)            # [B, N + n_fft]
        power = self._power_spectrogram(padded)                       # [B, n_freqs, T + 1]
        mel = torch.matmul(self.mel_fb.t().to(power.dtype), power)[..., :-1]   # [B, n_mels, T]
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        normalised = ((db - self.mean) / self.std).float()
        valid = self.valid_frames(lengths, normalised.shape[-1])     # [B, T]
        return normalised * valid[:, None, :].to(normalised.dtype), valid

    def valid_frames(self, lengths: torch.Tensor, num_frames) -> torch.Tensor:
        positions = torch.arange(num_frames, device=lengths.device)
        return positions[None, :] < frame_count(lengths, self.hop_length)[:, None]

    def _reflect_pad_per_clip(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        n = wave.shape[1]
        j = torch.arange(n + 2 * pad, device=wave.device)[None, :] - pad     # [1, N + 2p]
        last = (lengths[:, None] - 1).to(j.dtype)                             # [B, 1]
        j = torch.abs(j)                                                      # reflect at the start
        j = torch.where(j > last, 2 * last - j, j)                            # reflect at the clip's end
        j = torch.clamp(j, min=0, max=n - 1)                                  # far past the end: masked later
        return torch.gather(wave, 1, j.expand(wave.shape[0], -1))

    def _power_spectrogram(self, padded: torch.Tensor) -> torch.Tensor:
        if self.use_dft_conv:
            basis = self.basis if not self.float64 else torch.from_numpy(dft_basis(self.n_fft, np.float64)).to(padded.device)
            spec = strided_conv1d(padded, basis, self.hop_length)                # [B, 2F, T+1]
            real, imag = spec.chunk(2, dim=1)
            return real * real + imag * imag
        window = self.window if not self.float64 else torch.from_numpy(hann_window(self.n_fft)).to(padded.device)
        spec = torch.stft(padded, self.n_fft, self.hop_length, window=window, center=False,
                          return_complex=True)
        return spec.real.square() + spec.imag.square()


def subsampled_frames(mel_frames, times: int = 2):
    """Frames after `times` stride-2 convolutions (kernel 3, padding 1): ceil(T / 2) each time."""
    for _ in range(times):
        mel_frames = (mel_frames + 1) // 2
    return mel_frames
