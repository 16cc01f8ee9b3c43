"""MelFrontEnd against librosa (an independent implementation), for both STFT paths."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from deramos.model.frontend import MelFrontEnd, frame_count, mel_filterbank, strided_conv1d

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# (sample rate, n_fft, hop, n_mels): MuQ's settings and the `small` preset's.
SETTINGS = [(24000, 2048, 240, 128), (16000, 512, 160, 64)]
MEAN, STD = 6.768444971712967, 18.417922652295623   # MuQ's statistics: un-normalising must undo them


def music(sr: int, seconds: float, seed: int) -> np.ndarray:
    """Sum of harmonic tones with attack/decay envelopes and a little noise (float32, peak 0.5)."""
    rng = np.random.default_rng(seed)
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    y = np.zeros(n)
    for _ in range(4):
        f0 = rng.uniform(60.0, 900.0)
        onset = rng.uniform(0.0, 0.6 * seconds)
        decay = rng.uniform(0.5, 6.0)
        env = np.where(t >= onset, (1.0 - np.exp(-(t - onset) * 200.0)) * np.exp(-(t - onset) * decay), 0.0)
        for h in range(1, 8):
            if f0 * h < sr / 2:
                y += env * rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
    y += 0.01 * rng.standard_normal(n)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def chirp(sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (0.4 * scipy.signal.chirp(t, f0=50.0, t1=seconds, f1=0.45 * sr, method="logarithmic")).astype(np.float32)


def librosa_power(y: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """The reference: float64 mel power, last frame dropped -> [n_mels, N // hop]."""
    mel = librosa.feature.melspectrogram(
        y=y.astype(np.float64), sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, htk=True, norm=None,
        center=True, pad_mode="reflect", power=2.0, window="hann", dtype=np.float64)
    return mel[:, :-1]


def ours_db(frontend: MelFrontEnd, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Un-normalised dB [B, n_mels, T] and the valid mask [B, T] for a zero-padded batch."""
    width = max(len(w) for w in waves)
    batch = np.zeros((len(waves), width), dtype=np.float32)
    for row, w in enumerate(waves):
        batch[row, :len(w)] = w
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    with torch.no_grad():
        x, valid = frontend(torch.from_numpy(batch), lengths)
    return x.double().numpy() * frontend.std + frontend.mean, valid.numpy()


def assert_db_close(db: np.ndarray, power: np.ndarray, what: str = "") -> None:
    """Our dB [n_mels, T] vs librosa's float64 power [n_mels, T], where power > 1e-8.

    The front-end runs in float32, so a bin's rounding error is relative to the frame's
    energy, not to the bin's: bins far below the clip's loudest cannot be exact in dB.
    - within 60 dB of the clip's maximum: |error| < 1e-3 dB;
    - further down: the allowance grows as the amplitude error does, x10 per 20 dB
      (1e-2 dB at -80 dB, 0.1 dB at -100 dB), which still catches any real mistake
      (a wrong window, filter, padding or scale is off by far more, and everywhere)."""
    ref = 10.0 * np.log10(np.maximum(power, 1e-10))
    below = ref.max() - ref                                   # dB below the clip's maximum
    strong = power > 1e-8
    err = np.abs(db - ref)
    near = strong & (below <= 60.0)
    assert near.mean() > 0.1, what
    assert err[near].max() < 1e-3, f"{what}: max |dB error| {err[near].max():.2e} within 60 dB of the peak"
    allowance = 1e-3 * 10.0 ** (np.maximum(below - 60.0, 0.0) / 20.0)
    ratio = (err / allowance)[strong]
    assert ratio.max() < 1.0, f"{what}: error {err[strong][ratio.argmax()]:.2e} dB at " \
                              f"{below[strong][ratio.argmax()]:.0f} dB below the peak"


def make_frontend(sr, n_fft, hop, n_mels, dft: bool) -> MelFrontEnd:
    frontend = MelFrontEnd(sr, n_fft, hop, n_mels, mean=MEAN, std=STD)
    frontend.use_dft_conv = dft
    return frontend.eval()


SIGNALS = [("music", 0), ("music", 1), ("music", 2), ("chirp", None)]


@pytest.mark.parametrize("dft", [False, True], ids=["torch_stft", "dft_conv"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"sr{s[0]}_fft{s[1]}")
@pytest.mark.parametrize("signal", SIGNALS, ids=lambda s: f"{s[0]}{'' if s[1] is None else s[1]}")
def test_log_mel_matches_librosa(setting, dft, signal):
    sr, n_fft, hop, n_mels = setting
    kind, seed = signal
    y = music(sr, 0.8, seed) if kind == "music" else chirp(sr, 0.8)
    power = librosa_power(y, sr, n_fft, hop, n_mels)

    db, valid = ours_db(make_frontend(sr, n_fft, hop, n_mels, dft), [y])

    assert db.shape == (1, n_mels, len(y) // hop) == (1,) + power.shape
    assert valid.all()
    assert (power > 1e-8).mean() > 0.3          # the comparison covers much of the spectrogram
    assert_db_close(db[0], power)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"sr{s[0]}_fft{s[1]}")
def test_filterbank_equals_librosa_htk_unnormalised(setting):
    sr, n_fft, _, n_mels = setting
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, htk=True, norm=None, dtype=np.float64)
    ours = mel_filterbank(sr, n_fft, n_mels)
    assert ours.shape == (n_fft // 2 + 1, n_mels)
    np.testing.assert_allclose(ours, ref.T, rtol=0, atol=1e-6)
    # and the module really uses it
    frontend = make_frontend(*setting, dft=False)
    np.testing.assert_allclose(frontend.mel_fb.numpy(), ref.T, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [2400, 2401, 2639, 2640, 4799, 12345])
def test_frame_count_is_n_floordiv_hop(n):
    sr, n_fft, hop, n_mels = 24000, 2048, 240, 128
    assert frame_count(n, hop) == n // hop
    y = music(sr, n / sr, 3)[:n]
    for dft in (False, True):
        db, valid = ours_db(make_frontend(sr, n_fft, hop, n_mels, dft), [y])
        assert db.shape[-1] == n // hop
        assert valid.shape == (1, n // hop) and valid.all()
    assert librosa_power(y, sr, n_fft, hop, n_mels).shape[-1] == n // hop


@pytest.mark.parametrize("dft", [False, True], ids=["torch_stft", "dft_conv"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"sr{s[0]}_fft{s[1]}")
def test_batch_of_different_lengths_equals_each_clip_alone(setting, dft):
    sr, n_fft, hop, n_mels = setting
    frontend = make_frontend(sr, n_fft, hop, n_mels, dft)
    # lengths that are / are not multiples of the hop, longest not first
    waves = [music(sr, 0.37, 10)[: int(0.37 * sr) + 7], music(sr, 0.9, 11), chirp(sr, 0.55)[:-3]]
    batch_db, batch_valid = ours_db(frontend, waves)
    width = max(len(w) for w in waves)
    assert batch_db.shape == (3, n_mels, width // hop)

    for row, w in enumerate(waves):
        alone, alone_valid = ours_db(frontend, [w])
        t = len(w) // hop
        assert alone.shape[-1] == t and alone_valid.all()
        np.testing.assert_array_equal(batch_valid[row], np.arange(width // hop) < t)
        # per-clip reflect padding: the clip's frames do not depend on its neighbours.
        # Compared in normalised units (what the encoder sees): 1e-5. The torch.stft path is
        # bit-exact; the DFT-conv path rounds differently for different batch shapes (float32
        # conv kernels), which only shows in bins far below the peak, so there the normalised
        # comparison is limited to bins within 40 dB of the clip's maximum.
        ours_n = (batch_db[row, :, :t] - MEAN) / STD
        alone_n = (alone[0] - MEAN) / STD
        near = alone[0] >= alone[0].max() - (40.0 if dft else np.inf)
        np.testing.assert_allclose(ours_n[near], alone_n[near], rtol=0, atol=1e-5)
        # and are right in absolute terms (vs librosa on the clip alone) everywhere
        assert_db_close(batch_db[row, :, :t], librosa_power(w, sr, n_fft, hop, n_mels), f"clip {row}")

    # frames past a clip's length are exactly zero (normalised output)
    with torch.no_grad():
        batch = np.zeros((3, width), dtype=np.float32)
        for row, w in enumerate(waves):
            batch[row, :len(w)] = w
        x, _ = frontend(torch.from_numpy(batch), torch.tensor([len(w) for w in waves]))
    for row, w in enumerate(waves):
        assert torch.count_nonzero(x[row, :, len(w) // hop:]) == 0


def test_padding_content_does_not_matter():
    """Garbage after a clip's end (not zeros) changes nothing in its valid frames."""
    sr, n_fft, hop, n_mels = 16000, 512, 160, 64
    frontend = make_frontend(sr, n_fft, hop, n_mels, dft=False)
    short, long_ = music(sr, 0.4, 20), music(sr, 0.7, 21)
    batch = np.zeros((2, len(long_)), dtype=np.float32)
    batch[0, :len(short)] = short
    batch[1] = long_
    lengths = torch.tensor([len(short), len(long_)])
    with torch.no_grad():
        clean, _ = frontend(torch.from_numpy(batch), lengths)
        batch[0, len(short):] = np.random.default_rng(0).uniform(-5, 5, len(long_) - len(short))
        dirty, _ = frontend(torch.from_numpy(batch), lengths)
    torch.testing.assert_close(dirty, clean, rtol=0, atol=1e-6)


def test_torch_stft_and_dft_conv_paths_agree():
    sr, n_fft, hop, n_mels = 24000, 2048, 240, 128
    waves = [music(sr, 0.5, 30), music(sr, 0.3, 31)]
    a, _ = ours_db(make_frontend(sr, n_fft, hop, n_mels, dft=False), waves)
    b, _ = ours_db(make_frontend(sr, n_fft, hop, n_mels, dft=True), waves)
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 2e-3


@pytest.mark.parametrize("use_dft_conv", [False, True])
def test_float64_mode_is_the_exact_model_even_far_below_the_peak(use_dft_conv):
    """The reference exports are validated against: librosa's float64 mel within 1e-4 dB in every
    bin above the 1e-10 floor, where the float32 paths drift by up to ~1e-2 dB."""
    sr, n_fft, hop, n_mels = SETTINGS[1]
    y = scipy.signal.sosfilt(scipy.signal.butter(8, 1500, fs=sr, output="sos"), music(sr, 2.0, seed=4)).astype(np.float32)
    frontend = MelFrontEnd(sr, n_fft, hop, n_mels, MEAN, STD)
    frontend.use_dft_conv, frontend.float64 = use_dft_conv, True
    ours, _ = ours_db(frontend, [y])
    reference = 10.0 * np.log10(np.maximum(librosa_power(y, sr, n_fft, hop, n_mels), 1e-10))
    audible = reference > -99.0
    assert reference[audible].min() < reference.max() - 80.0        # the clip does reach far below its peak
    np.testing.assert_allclose(ours[0][audible], reference[audible], atol=1e-4)
    frontend.float64 = False
    float32, _ = ours_db(frontend, [y])
    assert np.abs(float32[0][audible] - reference[audible]).max() > 1e-3   # what float64 mode is for


@pytest.mark.parametrize("length", [4096, 4096 + 255, 164096, 164096 + 77])
@pytest.mark.parametrize("width, hop", [(4096, 256), (512, 256), (400, 160), (300, 256)])
def test_strided_conv1d_is_the_long_kernel_convolution(length, width, hop):
    """Cut into hops (width a multiple of the hop) or not, it is F.conv1d at the stride: same frames
    (the trailing samples no frame reads are dropped), same values up to float rounding. The
    reference is float64: a float32 sum of 4096 products is off by ~1e-5 on some CPUs' SIMD paths
    whichever way it is cut, so the tolerance grows with the kernel, as rounding does."""
    generator = torch.Generator().manual_seed(length + width)
    signal = torch.randn(3, length, generator=generator)
    kernels = torch.randn(10, 1, width, generator=generator) / width ** 0.5
    expected = torch.nn.functional.conv1d(signal[:, None, :].double(), kernels.double(), stride=hop)
    got = strided_conv1d(signal, kernels, hop)
    assert got.shape == expected.shape == (3, 10, (length - width) // hop + 1)
    torch.testing.assert_close(got.double(), expected, atol=2e-6 * width ** 0.5, rtol=0)
