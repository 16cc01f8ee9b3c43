"""Degradations that a weak text-to-music system might leave in its output.

Every family takes a continuous severity in [0, 1]; 0 leaves the audio untouched and
1 is about as bad as that artefact gets. Two families, ``detune`` and
``timing_jitter``, are rendered into the notes by :func:`deramos.data.synth.music.render_clip`;
the others are applied to finished audio by :func:`apply_degradations`.
"""

from __future__ import annotations

import numpy as np

# Rendered into the score by music.render_clip, not applied here.
RENDER_FAMILIES = ("detune", "timing_jitter")


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) + 1e-12


def _frequencies(n: int, sample_rate: int) -> np.ndarray:
    return np.fft.rfftfreq(n, 1.0 / sample_rate)


def add_noise(x: np.ndarray, severity: float, rng, sample_rate: int) -> np.ndarray:
    """White/pink noise mix at an SNR from 50 dB (s=0) down to 0 dB (s=1)."""
    white = rng.standard_normal(x.size)
    spectrum = np.fft.rfft(rng.standard_normal(x.size))
    spectrum /= np.sqrt(np.maximum(_frequencies(x.size, sample_rate), 20.0))  # 1/f power
    pink = np.fft.irfft(spectrum, x.size)
    pink_share = rng.uniform()
    noise = (1 - pink_share) * white / _rms(white) + pink_share * pink / _rms(pink)
    snr_db = 50.0 * (1.0 - severity)
    return x + noise / _rms(noise) * _rms(x) * 10 ** (-snr_db / 20)


def hard_clip(x: np.ndarray, severity: float, rng, sample_rate: int) -> np.ndarray:
    """Overdrive into a hard ceiling: up to +22 dB past full scale at s=1."""
    drive = 10 ** (22.0 * severity / 20)
    return np.clip(x / (np.abs(x).max() + 1e-12) * drive, -1.0, 1.0) * 0.98


def low_pass(x: np.ndarray, severity: float, rng, sample_rate: int) -> np.ndarray:
    """Zero-phase 4th-order Butterworth-shaped low-pass, cut-off 7.6 kHz (s=0) to 300 Hz (s=1)."""
    cutoff = 7600.0 * (300.0 / 7600.0) ** severity
    gain = 1.0 / np.sqrt(1.0 + (_frequencies(x.size, sample_rate) / cutoff) ** 8)
    return np.fft.irfft(np.fft.rfft(x) * gain, x.size)


def dropouts(x: np.ndarray, severity: float, rng, sample_rate: int) -> np.ndarray:
    """Gaps, stutters and noise bursts; more and longer ones with severity."""
    y = x.copy()
    seconds = x.size / sample_rate
    count = max(1, int(round(severity * 1.2 * seconds)))
    peak = np.abs(x).max()
    for _ in range(count):
        length = int(sample_rate * (0.015 + 0.2 * severity) * rng.uniform(0.5, 1.5))
        length = min(length, x.size // 4)
        start = int(rng.integers(length, x.size - length))
        kind = rng.choice(("mute", "stutter", "burst"), p=(0.5, 0.3, 0.2))
        if kind == "mute":
            y[start : start + length] = 0.0
        elif kind == "stutter":  # a short grain played over and over, as a buffer underrun does
            grain = y[start - max(1, length // 4) : start]
            y[start : start + length] = np.resize(grain, length)
        else:
            y[start : start + length] = rng.uniform(-0.5, 0.5, length) * peak
    return y


def codec(x: np.ndarray, severity: float, rng, sample_rate: int) -> np.ndarray:
    """A crude perceptual codec: per STFT frame, drop weak bins, quantise magnitudes, cut the top band.

    Dropping bins below a frame-relative threshold gives the "birdie"/swirl artefacts
    of low-bitrate MP3s.
    """
    frame, hop = 512, 256
    window = np.sqrt(np.hanning(frame + 1)[:-1])  # sqrt-Hann twice sums to 1 at 50 % overlap
    n_frames = int(np.ceil(x.size / hop)) + 1
    padded = np.zeros((n_frames + 1) * hop)
    padded[hop : hop + x.size] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop][:n_frames] * window
    spectrum = np.fft.rfft(frames, axis=1)
    magnitude = np.abs(spectrum) + 1e-12
    floor_db = -70.0 + 55.0 * severity + rng.normal(0.0, 3.0 * severity, (n_frames, 1))
    keep = 20 * np.log10(magnitude / magnitude.max(axis=1, keepdims=True)) > floor_db
    step_db = 0.5 + 7.5 * severity
    quantised = 10 ** (np.round(20 * np.log10(magnitude) / step_db) * step_db / 20)
    keep &= _frequencies(frame, sample_rate)[None, :] < 8000.0 - 4500.0 * severity
    frames = np.fft.irfft(spectrum / magnitude * quantised * keep, frame, axis=1) * window
    out = np.zeros((n_frames + 1) * hop)
    out[:-hop].reshape(n_frames, hop)[:] += frames[:, :hop]  # overlap-add of half-overlapping frames
    out[hop:].reshape(n_frames, hop)[:] += frames[:, hop:]
    return out[hop : hop + x.size]


def reverb(x: np.ndarray, severity: float, rng, sample_rate: int) -> np.ndarray:
    """Smear with an exponentially decaying noise tail: RT60 0.2-3 s, up to 75 % wet."""
    rt60 = 0.2 + 2.8 * severity
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    response = rng.standard_normal(t.size) * np.exp(-6.91 * t / rt60)
    size = 1 << int(np.ceil(np.log2(x.size + response.size)))  # power of two: fast FFT
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(response, size), size)[: x.size]
    mix = 0.75 * severity
    return (1.0 - mix) * x + mix * wet * (_rms(x) / _rms(wet))


def bitcrush(x: np.ndarray, severity: float, rng, sample_rate: int) -> np.ndarray:
    """Fewer bits (16 down to 4) and sample-and-hold down-sampling (aliasing)."""
    hold = 1 + int(round(6 * severity**2))  # mild settings only lose bits
    held = np.repeat(x[::hold], hold)[: x.size]
    levels = 2.0 ** (15.0 - 12.0 * severity)
    return np.round(held * levels) / levels


def wobble(x: np.ndarray, severity: float, rng, sample_rate: int) -> np.ndarray:
    """Tape-style wow (0.4-1.5 Hz, up to 80 cents) and flutter (6-10 Hz, up to 15 cents)."""
    t = np.arange(x.size) / sample_rate
    delay = np.zeros_like(t)
    for rate, cents in ((rng.uniform(0.4, 1.5), 80.0), (rng.uniform(6.0, 10.0), 15.0)):
        deviation = 2 ** (cents * severity / 1200) - 1  # relative frequency deviation
        delay += deviation / (2 * np.pi * rate) * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return np.interp((t - delay) * sample_rate, np.arange(x.size), x)


# Post-render families in the order they are applied: generation artefacts first,
# then the channel (noise, dropouts, quantisation), clipping last.
EFFECTS = {
    "reverb": reverb,
    "lowpass": low_pass,
    "wobble": wobble,
    "codec": codec,
    "noise": add_noise,
    "dropouts": dropouts,
    "bitcrush": bitcrush,
    "clipping": hard_clip,
}
FAMILIES = ("noise", "clipping", "lowpass", "dropouts", "detune", "timing_jitter", "codec", "reverb", "bitcrush", "wobble")


def apply_degradations(audio: np.ndarray, severities: dict[str, float], rng, sample_rate: int = 16000) -> np.ndarray:
    """Apply the post-render families named in `severities` (render-time ones are skipped).

    The result keeps its level but never exceeds 0.97 full scale, unless the clipping
    family put a hard ceiling on it at 0.98.
    """
    unknown = set(severities) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown degradation families: {sorted(unknown)}")
    y = np.asarray(audio, dtype=np.float64)
    for name, effect in EFFECTS.items():
        if name == "clipping":  # noise and codec can push peaks up: only clipping may clip
            y = y * min(1.0, 0.97 / (np.abs(y).max() + 1e-12))
        severity = float(severities.get(name, 0.0))
        if severity > 0.0:
            y = effect(y, min(severity, 1.0), rng, sample_rate)
    return y.astype(np.float32)
