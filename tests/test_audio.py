"""Tests for deramos.runtime.audio, on real files written by soundfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deramos.runtime.audio import AudioError, load_audio, prepare_waveform, resample, to_mono

RATE = 16000


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def message_of(excinfo: pytest.ExceptionInfo[AudioError]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# --- formats ------------------------------------------------------------------------------------


def test_pcm16_wav_at_target_rate_is_returned_unchanged(tmp_path: Path) -> None:
    wave = sine(440, RATE, 0.5)
    path = tmp_path / "clip.wav"
    sf.write(path, wave, RATE, subtype="PCM_16")
    out = load_audio(path, RATE)
    assert out.dtype == np.float32 and out.shape == (len(wave),)
    np.testing.assert_allclose(out, wave, atol=1 / 32768)


def test_pcm_u8_wav(tmp_path: Path) -> None:
    wave = sine(300, 8000, 0.25)
    path = tmp_path / "u8.wav"
    sf.write(path, wave, 8000, subtype="PCM_U8")
    assert sf.info(path).subtype == "PCM_U8"
    out = load_audio(path, 8000)
    np.testing.assert_allclose(out, wave, atol=1 / 128)
    assert abs(float(out.mean())) < 0.01  # the unsigned offset was removed


def test_float32_wav_is_exact(tmp_path: Path) -> None:
    wave = sine(1000, RATE, 0.3, amplitude=0.9)
    path = tmp_path / "float.wav"
    sf.write(path, wave, RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, RATE), wave)


def test_flac(tmp_path: Path) -> None:
    wave = sine(440, 22050, 0.5)
    path = tmp_path / "clip.flac"
    sf.write(path, wave, 22050, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(path, 22050), wave, atol=1 / 32768)


@pytest.mark.skipif(
    "OGG" not in sf.available_formats() or "VORBIS" not in sf.available_subtypes("OGG"),
    reason="this libsndfile build cannot write OGG Vorbis",
)
def test_ogg_vorbis_keeps_its_pitch(tmp_path: Path) -> None:
    path = tmp_path / "clip.ogg"
    sf.write(path, sine(1000, 44100, 1.0), 44100, format="OGG", subtype="VORBIS")
    out = load_audio(path, RATE)
    assert abs(len(out) - RATE) <= 1
    assert abs(peak_frequency(out, RATE) - 1000) <= 2


def test_six_channels_at_96k_are_mixed_to_the_channel_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = 96000 // 2
    channels = (rng.standard_normal((frames, 6)) * 0.1).astype(np.float32)
    path = tmp_path / "six.wav"
    sf.write(path, channels, 96000, subtype="FLOAT")
    # At the file's own rate there is no resampling, so the mix must be the mean exactly.
    np.testing.assert_allclose(load_audio(path, 96000), channels.mean(axis=1), atol=1e-7)


def test_six_channels_at_96k_resampled_keep_length_and_pitch(tmp_path: Path) -> None:
    frames = 96000
    tone = sine(1000, 96000, frames / 96000)
    # Each channel carries the tone at a different gain, so the mix is the tone at the mean gain.
    gains = np.array([1.0, 0.5, 0.25, 0.8, 0.1, 0.6], dtype=np.float32)
    path = tmp_path / "six.wav"
    sf.write(path, tone[:, None] * gains[None, :], 96000, subtype="FLOAT")
    out = load_audio(path, RATE)
    assert abs(len(out) - frames * RATE / 96000) <= 1
    assert abs(peak_frequency(out, RATE) - 1000) <= 2
    middle = slice(RATE // 10, -RATE // 10)  # away from the filter's edge effects
    peak = np.abs(out[middle]).max()
    assert peak == pytest.approx(0.5 * gains.mean(), rel=0.01)


# --- errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, RATE)
    assert message_of(excinfo) == f"{path}: file not found"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, RATE)
    assert message_of(excinfo) == f"{path}: empty file (0 bytes)"


def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(b"this is not audio\n" * 64)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, RATE)
    text = message_of(excinfo)
    assert text.startswith(f"{path}: cannot decode audio (")
    assert text.endswith(")")
    assert "Error opening" not in text  # the short libsndfile reason, not its whole sentence


def test_truncated_wav_header(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, sine(440, RATE, 0.5), RATE)
    path = tmp_path / "clip.wav"
    path.write_bytes(good.read_bytes()[:30])
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, RATE)
    assert message_of(excinfo).startswith(f"{path}: cannot decode audio (")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as excinfo:
        load_audio(tmp_path, RATE)
    assert message_of(excinfo) == f"{tmp_path}: is a directory"


def test_header_only_wav_has_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), RATE)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, RATE)
    assert message_of(excinfo) == f"{path}: no samples"


def test_ten_millisecond_clip_is_too_short(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, sine(440, RATE, 0.01), RATE)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, RATE)
    assert message_of(excinfo) == f"{path}: too short (0.010 s < 0.100 s minimum)"


def test_nan_samples(tmp_path: Path) -> None:
    wave = sine(440, RATE, 0.5)
    wave[100] = np.nan
    path = tmp_path / "clip.wav"
    sf.write(path, wave, RATE, subtype="FLOAT")
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, RATE)
    assert message_of(excinfo) == f"{path}: contains NaN or infinite samples"


def test_too_long_is_rejected_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(8000 * 3, dtype=np.int16), 8000, subtype="PCM_16")

    def must_not_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was decoded although its header is already too long")

    monkeypatch.setattr(sf, "read", must_not_decode)
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, RATE, max_seconds=2.0)
    assert message_of(excinfo) == f"{path}: too long (3.0 s > 2.0 s maximum)"


def test_silence_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(RATE // 2, dtype=np.float32), RATE, subtype="PCM_16")
    out = load_audio(path, RATE)
    assert out.shape == (RATE // 2,)
    assert not out.any()


def test_ten_minute_clip(tmp_path: Path) -> None:
    frames = 8000 * 600
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(frames, dtype=np.int16), 8000, subtype="PCM_16")
    out = load_audio(path, RATE)
    assert abs(len(out) - 2 * frames) <= 1
    assert out.dtype == np.float32


def test_bad_target_rate() -> None:
    with pytest.raises(ValueError, match="target_rate"):
        prepare_waveform(np.zeros(RATE), RATE, 0)


# --- arrays -------------------------------------------------------------------------------------


def test_channels_first_and_channels_last_arrays_give_the_same_mix() -> None:
    rng = np.random.default_rng(1)
    channels_first = rng.uniform(-0.5, 0.5, size=(2, RATE)).astype(np.float32)
    expected = channels_first.mean(axis=0)
    out_first = prepare_waveform(channels_first, RATE, RATE)
    out_last = prepare_waveform(channels_first.T.copy(), RATE, RATE)
    assert out_first.shape == out_last.shape == (RATE,)
    np.testing.assert_allclose(out_first, expected, atol=1e-7)
    np.testing.assert_allclose(out_last, expected, atol=1e-7)


def test_int16_array_is_scaled() -> None:
    wave = np.array([0, 16384, -32768, 32767] * 1000, dtype=np.int16)
    out = prepare_waveform(wave, 8000, 8000)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:4], np.array([0.0, 0.5, -1.0, 32767 / 32768], dtype=np.float32))


def test_int32_and_uint8_arrays_are_scaled() -> None:
    int32 = np.full(1000, 2**30, dtype=np.int32)
    np.testing.assert_array_equal(prepare_waveform(int32, 8000, 8000), 0.5)
    uint8 = np.array([128, 192, 0, 255] * 250, dtype=np.uint8)
    out = prepare_waveform(uint8, 8000, 8000)
    np.testing.assert_array_equal(out[:4], np.array([0.0, 0.5, -1.0, 127 / 128], dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_arrays_become_float32(dtype: type) -> None:
    wave = sine(440, 8000, 0.5).astype(dtype)
    out = prepare_waveform(wave, 8000, 8000)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, wave.astype(np.float32))


def test_array_resampled_length_and_pitch() -> None:
    out = prepare_waveform(sine(1000, 44100, 1.0), 44100, RATE)
    assert abs(len(out) - RATE) <= 1
    assert abs(peak_frequency(out, RATE) - 1000) <= 2


def test_array_with_inf_is_rejected_with_its_name() -> None:
    wave = np.zeros(RATE, dtype=np.float64)
    wave[-1] = np.inf
    with pytest.raises(AudioError) as excinfo:
        prepare_waveform(wave, RATE, RATE, name="item-7")
    assert message_of(excinfo) == "item-7: contains NaN or infinite samples"


def test_float64_beyond_float32_range_is_rejected() -> None:
    wave = np.zeros(RATE, dtype=np.float64)
    wave[0] = 1e300
    with pytest.raises(AudioError, match="NaN or infinite"):
        prepare_waveform(wave, RATE, RATE)


def test_silent_array_is_valid() -> None:
    out = prepare_waveform(np.zeros((2, RATE), dtype=np.int16), RATE, 8000)
    assert abs(len(out) - 8000) <= 1
    assert not out.any()


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, float("nan"), float("inf"), "16000", True, None])
def test_invalid_sample_rate(rate: object) -> None:
    with pytest.raises(AudioError) as excinfo:
        prepare_waveform(np.zeros(RATE), rate, RATE, name="x")  # type: ignore[arg-type]
    assert message_of(excinfo).startswith("x: invalid sample rate ")


def test_numpy_integer_sample_rate_is_accepted() -> None:
    assert prepare_waveform(np.zeros(RATE), np.int64(RATE), RATE).shape == (RATE,)


@pytest.mark.parametrize(
    ("wave", "cause"),
    [
        (np.zeros(0), "no samples"),
        (np.zeros((2, 0)), "no samples"),
        (np.zeros((2, 2, 100)), "expected a 1-D or 2-D array, got 3-D"),
        (np.zeros(100, dtype=complex), "unsupported sample type complex128"),
        (np.zeros(160), "too short (0.010 s < 0.100 s minimum)"),
    ],
)
def test_bad_arrays(wave: np.ndarray, cause: str) -> None:
    with pytest.raises(AudioError) as excinfo:
        prepare_waveform(wave, RATE, RATE)
    assert message_of(excinfo) == f"<array>: {cause}"


def test_array_too_long() -> None:
    with pytest.raises(AudioError) as excinfo:
        prepare_waveform(np.zeros(8000 * 3), 8000, 8000, max_seconds=2.5)
    assert message_of(excinfo) == "<array>: too long (3.0 s > 2.5 s maximum)"


def test_to_mono_layouts() -> None:
    assert to_mono(np.ones(5, dtype=np.int16)).dtype == np.float32
    channels_first = np.stack([np.zeros(100), np.ones(100)])
    np.testing.assert_array_equal(to_mono(channels_first), 0.5)
    np.testing.assert_array_equal(to_mono(channels_first.T), 0.5)
    # More than 16 rows cannot be channels: read as (samples, channels).
    assert to_mono(np.ones((17, 100))).shape == (17,)


def test_resample_identity_and_dtype() -> None:
    wave = sine(440, 8000, 0.1).astype(np.float64)
    same = resample(wave, 8000, 8000)
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, wave.astype(np.float32))
    up = resample(wave, 8000, 16000)
    assert up.dtype == np.float32 and abs(len(up) - 2 * len(wave)) <= 1


def test_audio_error_is_a_value_error_on_one_line() -> None:
    error = AudioError("clip.wav", "cannot decode audio (bad\nthing)")
    assert isinstance(error, ValueError)
    assert str(error) == "clip.wav: cannot decode audio (bad thing)"
