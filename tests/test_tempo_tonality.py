"""Tempo, tonality, envelope and tuning features (deramos/model/tempo_tonality.py): they find the beat
and the mode of known signals, see the floor that reverb and noise raise and the pitch drift of
tape wobble, ignore transposition, the reference pitch and batching, and export to ONNX with the
encoder."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from deramos.model.config import preset
from deramos.model.musicnn import LogMel, MusicnnEncoder
from deramos.data.synth.degrade import add_noise, reverb, wobble
from deramos.model.tempo_tonality import ENVELOPE_GROUPS, ENVELOPE_LAGS, RHYTHM_BIN_EDGES, WIDTHS, TempoTonality

SR = 16000
FPS = SR / 256


def click_track(bpm: float, seconds: float = 6.0) -> np.ndarray:
    wave = np.zeros(int(SR * seconds), np.float32)
    click = np.hanning(400) * np.sin(2 * np.pi * 1000 * np.arange(400) / SR)
    for start in range(0, len(wave) - 400, int(SR * 60 / bpm)):
        wave[start:start + 400] += click
    return wave


def chord(midi_notes, seconds: float = 6.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.2 * sum(np.sin(2 * np.pi * 440 * 2 ** ((n - 69) / 12) * t) for n in midi_notes)).astype(np.float32)


def features(waves: list[np.ndarray], which=("rhythm", "tonality")) -> torch.Tensor:
    """[B, P, D] for clips zero-padded into one batch, patches every 94 mel frames."""
    batch = torch.zeros(len(waves), max(len(w) for w in waves))
    for row, wave in enumerate(waves):
        batch[row, :len(wave)] = torch.from_numpy(wave)
    lengths = torch.tensor([len(w) for w in waves])
    log_mel, valid = LogMel()(batch, lengths)
    starts = torch.arange((log_mel.shape[-1] + 93) // 94) * 94
    index = starts[:, None] + torch.arange(187)[None, :]
    with torch.no_grad():
        return TempoTonality(which)(batch, lengths, log_mel, valid, index)


@pytest.mark.parametrize("bpm", [70.0, 100.0, 140.0])
def test_rhythm_peaks_at_the_beat(bpm):
    rhythm = features([click_track(bpm)], ("rhythm",))[0, 0]
    assert rhythm.shape == (WIDTHS["rhythm"],)
    strongest = int(rhythm[:24].argmax())
    lo, hi = RHYTHM_BIN_EDGES[strongest], RHYTHM_BIN_EDGES[strongest + 1]
    beat = FPS * 60 / bpm
    assert lo - 1 <= beat <= hi, (bpm, lo, hi)
    assert rhythm[strongest] > 0.5          # normalised autocorrelation of a clean click track


def test_tonality_tells_major_from_minor_in_any_key():
    majors = [[60, 64, 67, 72], [62, 66, 69, 74], [55, 59, 62, 67]]
    minors = [[57, 60, 64, 69], [60, 63, 67, 72], [64, 67, 71, 76]]
    major_diff = [float(features([chord(n)], ("tonality",))[0, 0, 2]) for n in majors]
    minor_diff = [float(features([chord(n)], ("tonality",))[0, 0, 2]) for n in minors]
    assert min(major_diff) > 0.1 and max(minor_diff) < -0.1, (major_diff, minor_diff)


def test_tonality_ignores_transposition():
    c_major = features([chord([60, 64, 67, 72])], ("tonality",))[0, 0]
    d_flat_major = features([chord([61, 65, 68, 73])], ("tonality",))[0, 0]
    assert torch.allclose(c_major, d_flat_major, atol=0.03), (c_major, d_flat_major)


def test_a_clip_gives_the_same_features_alone_or_in_a_batch():
    long, short = click_track(100, 6.0), chord([60, 64, 67], 2.5)
    together = features([long, short])
    alone = features([short])
    assert torch.allclose(together[0], features([long])[0], atol=1e-5)
    assert torch.allclose(together[1, :alone.shape[1]], alone[0], atol=1e-5)


def staccato(seconds: float = 6.0) -> np.ndarray:
    """Short broadband notes (decaying noise bursts) with silence between them: steep falls, a low floor."""
    rng = np.random.default_rng(0)
    wave = np.zeros(int(SR * seconds), np.float32)
    burst = (rng.standard_normal(1600) * np.exp(-np.arange(1600) / 300)).astype(np.float32) * 0.3
    for start in range(0, len(wave) - 1600, SR // 2):
        wave[start:start + 1600] += burst
    return wave


def envelope_parts(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(steepest fall / steepest rise [groups, lags], floor / peak [groups]), mean over the patches."""
    out = features([wave], ("envelope",))[0].mean(dim=0).numpy().reshape(len(ENVELOPE_GROUPS), len(ENVELOPE_LAGS) + 1)
    return out[:, :-1], out[:, -1]


def test_envelope_falls_of_short_notes_are_as_steep_as_their_rises():
    wave = staccato()
    falls, floor = envelope_parts(wave)
    assert features([wave], ("envelope",)).shape[-1] == WIDTHS["envelope"] == 12
    assert (falls < -0.8).all() and (falls > -1.3).all(), falls
    assert (floor < 0.1).all(), floor


def test_envelope_floor_rises_with_reverb_on_real_music():
    dry, _ = sf.read("tests/data/realmusic_clean/arrangement_chiptune_S001_P5009.flac", dtype="float32")
    wet = reverb(dry, 1.0, np.random.default_rng(1), SR).astype(np.float32)
    (_, dry_floor), (_, wet_floor) = envelope_parts(dry), envelope_parts(wet)
    assert (wet_floor > dry_floor + 0.1).all(), (dry_floor, wet_floor)   # the tail fills the gaps


def test_envelope_floor_rises_with_noise():
    dry = staccato()
    _, clean_floor = envelope_parts(dry)
    _, noisy_floor = envelope_parts(add_noise(dry, 1.0, np.random.default_rng(2), SR).astype(np.float32))
    assert (clean_floor < 0.1).all() and (noisy_floor > clean_floor + 0.2).all(), (clean_floor, noisy_floor)


def test_envelope_ignores_what_lies_past_a_clip_end():
    long, short = staccato(6.0), staccato(2.5)
    together = features([long, short], ("envelope",))
    alone = features([short], ("envelope",))
    assert torch.allclose(together[1, :alone.shape[1]], alone[0], atol=1e-5)


def tuning_parts(wave: np.ndarray) -> np.ndarray:
    """[spread, wander, drift at 12 and 24 frames], averaged over the patches."""
    out = features([wave], ("tuning",))
    assert out.shape[-1] == WIDTHS["tuning"] == 4
    return out[0].mean(dim=0).numpy()


def test_tuning_is_still_for_steady_chords_in_any_reference_pitch():
    # A440, then sharper by 8, 17 (midway between two grids), 25 and 50 cents
    for offset in (0.0, 0.08, 0.17, 0.25, 0.5):
        spread, wander, *drift = tuning_parts(chord([76 + offset, 79 + offset, 84 + offset]))
        assert spread < 0.55 and wander < 0.01 and max(drift) < 0.01, (offset, spread, wander, drift)


def test_tuning_spreads_for_noise():
    noise = np.random.default_rng(3).normal(0.0, 0.1, SR * 6).astype(np.float32)
    spread, wander, *drift = tuning_parts(noise)
    assert spread > 0.8 and wander > 0.5 and min(drift) > 0.5, (spread, wander, drift)


def test_tuning_drifts_with_tape_wobble_on_real_music():
    dry, _ = sf.read("tests/data/realmusic_clean/arrangement_chiptune_S001_P5009.flac", dtype="float32")
    rows = [tuning_parts(wobble(dry, severity, np.random.default_rng(4), SR).astype(np.float32))
            for severity in (0.25, 0.5, 1.0)]
    clean = tuning_parts(dry)
    assert clean[1] < 0.05 and clean[2] < 0.05, clean
    assert clean[1] < rows[0][1] < rows[1][1] and clean[2] < rows[0][2] < rows[1][2], (clean, rows)
    assert min(r[1] for r in rows) > 4 * clean[1] and rows[2][2] > 10 * clean[2], (clean, rows)


def test_tuning_ignores_what_lies_past_a_clip_end():
    # pitches in the tuning range (E5 and up), the short clip wobbling so that every value moves
    long = chord([76, 80, 83], 6.0)
    short = wobble(chord([77, 81, 84], 2.5), 1.0, np.random.default_rng(5), SR).astype(np.float32)
    together = features([long, short], ("tuning",))
    alone = features([short], ("tuning",))
    assert (alone[0].abs() > 0.01).all(), alone   # a check that zeros could not pass
    assert torch.allclose(together[1, :alone.shape[1]], alone[0], atol=1e-5)


def test_silence_gives_finite_features():
    out = features([np.zeros(SR * 4, np.float32)], ("rhythm", "tonality", "envelope", "tuning"))
    assert torch.isfinite(out).all()
    assert out[..., -WIDTHS["tuning"]:].abs().max() < 1e-6   # no pitch: neither in tune nor out


def test_unknown_feature_is_refused():
    with pytest.raises(ValueError, match="unknown tempo/tonality features"):
        TempoTonality(("groove",))


def test_encoder_appends_them_after_the_backbones_and_exports(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    cfg = preset("musicnn").audio
    cfg.features = ("penultimate", "taggram", "rhythm", "tonality", "envelope", "tuning")
    encoder = MusicnnEncoder(cfg).eval()
    assert cfg.hidden_size == 500 + WIDTHS["rhythm"] + WIDTHS["tonality"] + WIDTHS["envelope"] + WIDTHS["tuning"]
    wave, _ = sf.read("tests/data/musicnn/beethoven_op18no1_4s.wav", dtype="float32")
    batch = torch.from_numpy(np.stack([wave, np.concatenate([wave[:SR * 3], np.zeros(len(wave) - SR * 3, np.float32)])]))
    lengths = torch.tensor([len(wave), SR * 3])
    encoder.frontend.use_dft_conv = True
    with torch.no_grad():
        frames, real = encoder(batch, lengths)
    assert frames.shape == (2, real.shape[1], cfg.hidden_size)
    extra = frames[..., 500:]
    assert torch.isfinite(extra).all() and extra[0, 0].abs().sum() > 0
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(encoder, (batch, lengths), str(path), input_names=["wave", "lengths"],
                      output_names=["frames", "mask"], dynamic_axes={"wave": {0: "b", 1: "n"}, "lengths": {0: "b"}},
                      opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["frames"], {"wave": batch.numpy(), "lengths": lengths.numpy()})[0]
    assert np.abs(got[..., 500:] - extra.numpy()).max() < 1e-4
