"""Polyphonic music rendered from a handful of attributes, in numpy only.

A clip is described by :class:`ClipAttributes` (lead instrument, tempo, mode, genre,
dynamics, key, ...). :func:`compose` turns the attributes into a score (melody,
chords, bass, drums) and :func:`render_clip` synthesises it: wavetable additive
voices, a Karplus-Strong plucked string and synthesised kick/snare/hat.
:func:`prompt_for` writes a text prompt describing the same attributes.

Two "generation flaws" are rendered into the notes themselves rather than applied
to the finished audio: timing jitter (onsets) and detuning (pitches).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from typing import NamedTuple

import numpy as np

SAMPLE_RATE = 16000

INSTRUMENTS = ("piano", "organ", "guitar", "pad", "synth", "flute")
GENRES = ("waltz", "rock", "dance", "ambient", "swing")
MODES = ("major", "minor")
DYNAMICS = ("soft", "loud", "crescendo")
# Tempo bands leave gaps between them so a tempo word is never borderline.
TEMPO_BANDS = {"slow": (60.0, 82.0), "moderate": (90.0, 116.0), "fast": (126.0, 160.0)}
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# The attribute kinds a prompt names; text alignment is judged on these.
PROMPT_KINDS = ("instrument", "tempo", "mood", "genre", "dynamics")

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord progressions as 0-based scale degrees, one chord per bar.
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (5, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4)),
}

# Phrases a prompt may use for each attribute value. Tests read these too.
VOCABULARY = {
    "instrument": {
        "piano": ("piano", "grand piano", "upright piano"),
        "organ": ("organ", "church organ", "Hammond organ"),
        "guitar": ("plucked guitar", "acoustic guitar", "nylon-string guitar"),
        "pad": ("warm synth pad", "soft string pad", "lush pad"),
        "synth": ("bright synth lead", "sawtooth synth", "buzzy synth lead"),
        "flute": ("flute", "breathy flute", "wooden flute"),
    },
    "tempo": {
        "slow": ("slow", "unhurried", "leisurely"),
        "moderate": ("moderate", "mid-tempo", "steady"),
        "fast": ("fast", "brisk", "up-tempo"),
    },
    "mood": {
        "major": ("happy", "bright", "cheerful", "uplifting", "joyful"),
        "minor": ("sad", "melancholic", "dark", "somber", "wistful"),
    },
    "genre": {
        "waltz": ("waltz in 3/4 time", "three-four waltz", "lilting waltz"),
        "rock": ("rock song with a straight backbeat", "straight rock groove", "driving rock tune"),
        "dance": ("four-on-the-floor dance track", "club dance tune", "house-style dance beat"),
        "ambient": ("ambient piece with no drums", "drumless ambient soundscape", "ambient drone piece"),
        "swing": ("swing tune with a shuffle feel", "jazzy shuffle", "swinging jazz number"),
    },
    "dynamics": {
        "soft": ("played softly", "gentle and quiet", "at a soft, gentle volume"),
        "loud": ("played loudly", "loud and energetic", "with powerful, energetic dynamics"),
        "crescendo": ("building from quiet to loud", "with a steady crescendo", "growing louder throughout"),
    },
}

# Each template names all five kinds; {key} is optional.
TEMPLATES = (
    "{a_tempo} {tempo}, {mood} {genre} led by {instrument}, {dynamics}.",
    "{Mood} {genre} featuring {instrument} at {a_tempo} {tempo} pace, {dynamics}.",
    "{Instrument} carries this {tempo} and {mood} {genre}, {dynamics}.",
    "{Tempo} {genre} in {key} with {instrument} carrying {a_mood} {mood} melody, {dynamics}.",
    "{A_mood} {mood} {genre}: {instrument} over {a_tempo} {tempo} pulse, {dynamics}.",
    "{Dynamics}, this {tempo}, {mood} {genre} puts {instrument} up front.",
)


@dataclass(frozen=True)
class ClipAttributes:
    """What a clip sounds like (or what a prompt asks for)."""

    instrument: str = "piano"  # lead instrument, one of INSTRUMENTS
    tempo_bpm: float = 100.0
    mode: str = "major"  # sets the mood word
    genre: str = "rock"  # sets meter, groove and drums
    dynamics: str = "loud"
    key: int = 0  # tonic pitch class, 0 = C
    accompaniment: str = "pad"  # chord instrument; prompts do not name it
    progression: int = 0  # index into PROGRESSIONS[mode]

    @property
    def tempo_word(self) -> str:
        return tempo_word(self.tempo_bpm)

    @property
    def key_name(self) -> str:
        return f"{KEY_NAMES[self.key % 12]} {self.mode}"

    def kind_value(self, kind: str) -> str:
        """The value a prompt-level attribute kind takes (mood is carried by the mode)."""
        return {
            "instrument": self.instrument,
            "tempo": self.tempo_word,
            "mood": self.mode,
            "genre": self.genre,
            "dynamics": self.dynamics,
        }[kind]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClipAttributes":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def tempo_word(bpm: float) -> str:
    if bpm < 86.0:
        return "slow"
    if bpm < 121.0:
        return "moderate"
    return "fast"


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def random_attributes(rng) -> ClipAttributes:
    """Draw a random, musically plausible attribute set."""
    rng = _as_rng(rng)
    mode = str(rng.choice(MODES))
    low, high = TEMPO_BANDS[str(rng.choice(list(TEMPO_BANDS)))]
    return ClipAttributes(
        instrument=str(rng.choice(INSTRUMENTS)),
        tempo_bpm=round(float(rng.uniform(low, high)), 1),
        mode=mode,
        genre=str(rng.choice(GENRES)),
        dynamics=str(rng.choice(DYNAMICS)),
        key=int(rng.integers(12)),
        accompaniment=str(rng.choice(("piano", "organ", "guitar", "pad"))),
        progression=int(rng.integers(len(PROGRESSIONS[mode]))),
    )


def change_attribute(attributes: ClipAttributes, kind: str, rng) -> ClipAttributes:
    """Return a copy whose `kind` (one of PROMPT_KINDS) audibly differs."""
    rng = _as_rng(rng)

    def other(values, current):
        return str(rng.choice([v for v in values if v != current]))

    if kind == "instrument":
        return replace(attributes, instrument=other(INSTRUMENTS, attributes.instrument))
    if kind == "genre":
        return replace(attributes, genre=other(GENRES, attributes.genre))
    if kind == "mood":
        mode = other(MODES, attributes.mode)
        return replace(attributes, mode=mode, progression=attributes.progression % len(PROGRESSIONS[mode]))
    if kind == "tempo":
        low, high = TEMPO_BANDS[other(list(TEMPO_BANDS), attributes.tempo_word)]
        return replace(attributes, tempo_bpm=round(float(rng.uniform(low, high)), 1))
    if kind == "dynamics":
        return replace(attributes, dynamics=other(DYNAMICS, attributes.dynamics))
    raise ValueError(f"unknown attribute kind {kind!r}")


def attribute_matches(prompt: ClipAttributes, rendered: ClipAttributes) -> dict[str, bool]:
    """Which prompt-level attribute kinds the rendering honours."""
    return {kind: prompt.kind_value(kind) == rendered.kind_value(kind) for kind in PROMPT_KINDS}


# --------------------------------------------------------------------------- prompts


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def prompt_for(attributes: ClipAttributes, rng=None) -> str:
    """A natural-language prompt naming the five prompt-level attribute kinds.

    Without `rng` the wording is still varied but a pure function of the attributes.
    """
    if rng is None:
        rng = np.random.default_rng(zlib.crc32(repr(attributes).encode()))
    rng = _as_rng(rng)
    words = {kind: str(rng.choice(VOCABULARY[kind][attributes.kind_value(kind)])) for kind in PROMPT_KINDS}
    template = str(rng.choice(TEMPLATES))
    slots = dict(words, key=attributes.key_name)
    slots["a_tempo"] = _article(words["tempo"])
    slots["a_mood"] = _article(words["mood"])
    for name in list(slots):
        slots[_capitalise(name)] = _capitalise(slots[name])
    return _capitalise(template.format(**slots))


# --------------------------------------------------------------------------- score


class Note(NamedTuple):
    onset: float  # seconds
    duration: float  # seconds the key is held
    pitch: float  # MIDI note number
    velocity: float  # 0..1


class Hit(NamedTuple):
    onset: float
    drum: str  # "kick" | "snare" | "hat" | "ride"
    velocity: float


@dataclass
class Score:
    melody: list[Note]
    chords: list[Note]
    bass: list[Note]
    drums: list[Hit]


# Melody rhythms for one bar, as note lengths in beats, keyed by beats per bar.
_MELODY_RHYTHMS = {
    3: ((1, 1, 1), (2, 1), (1, 0.5, 0.5, 1), (1.5, 0.5, 1), (3,)),
    4: ((1, 1, 1, 1), (2, 1, 1), (1, 0.5, 0.5, 2), (0.5, 0.5, 1, 0.5, 0.5, 1), (1.5, 0.5, 1, 1), (1, 1, 2)),
    "ambient": ((4,), (2, 2), (3, 1)),
}
# Accompaniment as (onset, duration) in beats within a bar.
_CHORD_PATTERNS = {
    "waltz": ((1, 0.9), (2, 0.9)),
    "rock": ((0, 2.0), (2, 2.0)),
    "dance": ((0.5, 0.4), (1.5, 0.4), (2.5, 0.4), (3.5, 0.4)),
    "ambient": ((0, 4.5),),
    "swing": ((0, 1.4), (1.5, 1.0)),
}
_BASS_PATTERNS = {
    "waltz": ((0, 1.0),),
    "rock": tuple((i * 0.5, 0.45) for i in range(8)),
    "dance": ((0.5, 0.4), (1.5, 0.4), (2.5, 0.4), (3.5, 0.4)),
    "ambient": ((0, 4.0),),
    "swing": ((0, 0.9), (1, 0.9), (2, 0.9), (3, 0.9)),  # walking bass
}
_DRUM_PATTERNS = {
    "waltz": (("kick", 0, 1.0), ("snare", 1, 0.45), ("snare", 2, 0.45), ("hat", 0, 0.6), ("hat", 1, 0.5), ("hat", 2, 0.5)),
    "rock": (("kick", 0, 1.0), ("kick", 2, 0.9), ("kick", 2.5, 0.7), ("snare", 1, 1.0), ("snare", 3, 1.0))
    + tuple(("hat", i * 0.5, 0.8 if i % 2 == 0 else 0.55) for i in range(8)),
    "dance": tuple(("kick", float(i), 1.0) for i in range(4))
    + (("snare", 1, 0.8), ("snare", 3, 0.8))
    + tuple(("hat", i + 0.5, 0.8) for i in range(4)),
    "ambient": (),
    "swing": (("kick", 0, 0.7), ("kick", 2, 0.6), ("snare", 1, 0.5), ("snare", 3, 0.5))
    + tuple(("ride", t, v) for t, v in ((0, 0.8), (1, 0.7), (1.5, 0.5), (2, 0.8), (3, 0.7), (3.5, 0.5))),
}


def beats_per_bar(genre: str) -> int:
    return 3 if genre == "waltz" else 4


def _swing(beat: float) -> float:
    """Delay off-beat eighths to the last triplet: the shuffle feel."""
    return beat + 1.0 / 6.0 if abs(beat % 1.0 - 0.5) < 1e-9 else beat


def _degree_pitch(tonic: int, scale: tuple, degree: int) -> int:
    return tonic + scale[degree % 7] + 12 * (degree // 7)


def _dynamic_level(dynamics: str, position: float) -> float:
    """Velocity at relative clip position 0..1."""
    if dynamics == "soft":
        return 0.45
    if dynamics == "loud":
        return 0.95
    return 0.3 + 0.7 * position  # crescendo


def _melody_motif(rng, n_bars: int, meter: int, ambient: bool, progression: tuple) -> list[tuple]:
    """One progression cycle of melody as (beat, beats, degree or None for a rest)."""
    rhythms = _MELODY_RHYTHMS["ambient" if ambient else meter]
    steps, step_weights = (-2, -1, 0, 1, 2), (0.15, 0.3, 0.1, 0.3, 0.15)
    degree, motif = 4, []
    for bar in range(n_bars):
        chord_root = progression[bar % len(progression)]
        rhythm = rhythms[rng.integers(len(rhythms))]
        beat = 0.0
        for i, length in enumerate(rhythm):
            degree = int(np.clip(degree + rng.choice(steps, p=step_weights), 0, 10))
            if i == 0:  # land on a chord tone at the start of each bar
                tones = [chord_root + o + 7 * k for o in (0, 2, 4) for k in (0, 1)]
                degree = min(tones, key=lambda d: abs(d - degree))
            rest = i > 0 and rng.random() < 0.1
            motif.append((bar * meter + beat, float(length), None if rest else degree))
            beat += length
    return motif


def compose(attributes: ClipAttributes, seconds: float, rng=None) -> Score:
    """Write the score: a repeated, varied melody over a looping chord progression."""
    rng = _as_rng(rng)
    beat_s = 60.0 / attributes.tempo_bpm
    meter = beats_per_bar(attributes.genre)
    scale = SCALES[attributes.mode]
    progression = PROGRESSIONS[attributes.mode][attributes.progression % len(PROGRESSIONS[attributes.mode])]
    tonic = 48 + attributes.key
    n_bars = int(math.ceil(seconds / (meter * beat_s)))
    swing = attributes.genre == "swing"

    def when(bar: int, beat: float) -> float:
        return (bar * meter + (_swing(beat) if swing else beat)) * beat_s

    def velocity(onset: float, accent: float = 1.0) -> float:
        level = _dynamic_level(attributes.dynamics, min(onset / seconds, 1.0))
        return float(np.clip(level * accent * rng.uniform(0.9, 1.05), 0.05, 1.0))

    motif = _melody_motif(rng, len(progression), meter, attributes.genre == "ambient", progression)
    melody = []
    for cycle in range(int(math.ceil(n_bars / len(progression)))):
        for start, length, degree in motif:
            if degree is None:
                continue
            if cycle > 0 and rng.random() < 0.25:  # vary the repeats a little
                degree = int(np.clip(degree + rng.choice((-1, 1)), 0, 10))
            bar, beat = divmod(start, meter)
            onset = when(cycle * len(progression) + int(bar), beat)
            melody.append(Note(onset, length * beat_s * 0.95, _degree_pitch(tonic + 12, scale, degree), velocity(onset, 1.1 if beat == 0 else 1.0)))

    chords, bass, drums = [], [], []
    for bar in range(n_bars):
        root = progression[bar % len(progression)]
        for beat, length in _CHORD_PATTERNS[attributes.genre]:
            if beat >= meter:
                continue
            onset = when(bar, beat)
            for offset in (0, 2, 4):
                chords.append(Note(onset, length * beat_s, _degree_pitch(tonic, scale, root + offset), velocity(onset, 0.8)))
        walk = (0, 2, 4, 5)  # walking-bass degrees above the root
        for i, (beat, length) in enumerate(_BASS_PATTERNS[attributes.genre]):
            if beat >= meter:
                continue
            degree = root + (walk[i % 4] if swing else 0)
            onset = when(bar, beat)
            bass.append(Note(onset, length * beat_s, _degree_pitch(tonic - 12, scale, degree), velocity(onset, 1.0 if beat == 0 else 0.85)))
        for drum, beat, accent in _DRUM_PATTERNS[attributes.genre]:
            onset = when(bar, beat)
            drums.append(Hit(onset, drum, velocity(onset, accent)))
    return Score(melody, chords, bass, drums)


# --------------------------------------------------------------------------- voices

_TABLE_SIZE = 4096  # a power of two, so wrapping the phase is a bit-mask


@lru_cache(maxsize=512)
def _wavetable(amplitudes: tuple) -> np.ndarray:
    """One period of a waveform with the given harmonic amplitudes, peak 1."""
    harmonics = np.arange(1, len(amplitudes) + 1)[:, None]
    phase = np.arange(_TABLE_SIZE)[None, :] / _TABLE_SIZE
    table = (np.asarray(amplitudes)[:, None] * np.sin(2 * np.pi * harmonics * phase)).sum(axis=0)
    return table / np.abs(table).max()


def _harmonics(kind: str, freq: float, brightness: float) -> tuple:
    """Harmonic amplitudes of a timbre; brightness 0..1 tilts the spectrum."""
    n = max(1, int(7600.0 // freq))  # stay below Nyquist: no aliasing
    k = np.arange(1, 25, dtype=float)
    if kind == "organ":  # drawbars 8', 4', 2 2/3', 2', 1 3/5', 1'
        spectrum = np.array([1.0, 0.7, 0.5, 0.35, 0.0, 0.3, 0.0, 0.2])
    elif kind == "flute":
        spectrum = np.array([1.0, 0.22, 0.07, 0.03])
    elif kind == "bass":
        spectrum = np.array([1.0, 0.5, 0.22, 0.1, 0.04])
    elif kind == "saw":
        spectrum = k ** -(1.9 - 0.9 * brightness)
    else:  # piano / pad: softer roll-off, brighter when played hard
        spectrum = k[:12] ** -(2.6 - 1.0 * brightness)
    spectrum = spectrum[:n]
    return tuple(np.round(spectrum, 3))


def _phase(freq: float, n: int, sr: int, vibrato: float = 0.0, rate: float = 5.0) -> np.ndarray:
    """Phase in cycles; vibrato is a relative frequency deviation."""
    t = np.arange(n) / sr
    if vibrato == 0.0:
        return freq * t
    depth = vibrato * np.minimum(t / 0.3, 1.0)  # vibrato fades in, as players do
    return np.cumsum(freq * (1.0 + depth * np.sin(2 * np.pi * rate * t))) / sr


def _lookup(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    return table[(phase * _TABLE_SIZE).astype(np.int64) & (_TABLE_SIZE - 1)]


def _envelope(n_hold: int, n_release: int, sr: int, attack: float, decay: float, sustain: float) -> np.ndarray:
    """Attack ramp, exponential decay towards `sustain`, linear release after note-off."""
    t = np.arange(n_hold + n_release) / sr
    env = np.minimum(t / attack, 1.0) * (sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / decay))
    env[n_hold:] *= np.linspace(1.0, 0.0, n_release)
    return env


def _morph_voice(kind: str, freq: float, n_hold: int, sr: int, velocity: float, env_args: tuple, release: float, dull_after: float) -> np.ndarray:
    """Wavetable voice whose spectrum fades from bright (attack) to dull: a cheap filter decay."""
    n_release = int(release * sr)
    phase = _phase(freq, n_hold + n_release, sr)
    bright = _lookup(_wavetable(_harmonics(kind, freq, velocity)), phase)
    dull = _lookup(_wavetable(_harmonics(kind, freq, 0.0)), phase)
    morph = 1.0 - np.exp(-np.arange(phase.size) / (dull_after * sr))
    return (bright + morph * (dull - bright)) * _envelope(n_hold, n_release, sr, *env_args)


def _piano(freq, n_hold, sr, velocity, rng):
    decay = 1.2 * (freq / 262.0) ** -0.5  # low strings ring longer
    return _morph_voice("piano", freq, n_hold, sr, velocity, (0.004, decay, 0.0), 0.15, 0.25)


def _synth(freq, n_hold, sr, velocity, rng):
    return _morph_voice("saw", freq, n_hold, sr, velocity, (0.008, 0.25, 0.6), 0.12, 0.35)


def _bass(freq, n_hold, sr, velocity, rng):
    return _morph_voice("bass", freq, n_hold, sr, velocity, (0.005, 0.8, 0.3), 0.06, 0.3)


def _organ(freq, n_hold, sr, velocity, rng):
    n_release = int(0.06 * sr)
    tone = _lookup(_wavetable(_harmonics("organ", freq, 1.0)), _phase(freq, n_hold + n_release, sr))
    return tone * _envelope(n_hold, n_release, sr, 0.01, 1.0, 1.0)


def _pad(freq, n_hold, sr, velocity, rng):
    """Two slightly detuned voices with a slow swell: chorus-like beating."""
    n_release = int(0.6 * sr)
    table = _wavetable(_harmonics("pad", freq, 0.3 * velocity))
    n = n_hold + n_release
    cents = 2 ** (7 / 1200)
    tone = 0.5 * (_lookup(table, _phase(freq * cents, n, sr)) + _lookup(table, _phase(freq / cents, n, sr) + 0.25))
    return tone * _envelope(n_hold, n_release, sr, min(0.35, 0.5 * n_hold / sr + 1e-3), 1.0, 0.85)


def _flute(freq, n_hold, sr, velocity, rng):
    """Near-sine with delayed vibrato and a little breath noise."""
    n_release = int(0.08 * sr)
    n = n_hold + n_release
    tone = _lookup(_wavetable(_harmonics("flute", freq, 1.0)), _phase(freq, n, sr, vibrato=0.006, rate=5.2))
    breath = rng.standard_normal(n)
    breath = np.convolve(breath, np.ones(4) / 4, mode="same")  # take the fizz off the hiss
    return (tone + 0.04 * breath) * _envelope(n_hold, n_release, sr, 0.06, 1.0, 1.0)


def _karplus_strong(freq, n_hold, sr, velocity, rng):
    """Plucked string: a noise burst circulating in a lossy delay line.

    The recursion y[n] = g * (h0 y[n-N] + h1 y[n-N-1] + h2 y[n-N-2]) only reaches back
    at least N samples, so each period of N samples is computed in one vectorised step.
    The kernel is a two-point average (the string loss) convolved with a linear
    fractional delay, so the loop length N + 0.5 + w matches the pitch exactly.
    """
    n = n_hold + int(0.08 * sr)
    period = sr / freq
    delay = max(2, int(period - 0.5))
    frac = period - 0.5 - delay
    h0, h1, h2 = 0.5 * (1 - frac), 0.5, 0.5 * frac
    gain = 0.001 ** (1.0 / (freq * 4.0))  # -60 dB after 4 s, before the loss filter adds its own
    burst = rng.uniform(-1.0, 1.0, delay)
    smooth = 1 + int(round(3 * (1.0 - velocity)))  # soft plucks are duller
    burst = np.convolve(burst, np.ones(smooth) / smooth, mode="same")
    y = np.zeros(n + 2)  # two leading zeros give the recursion its history
    y[2 : 2 + delay] = burst - burst.mean()
    for start in range(2 + delay, n + 2, delay):
        end = min(start + delay, n + 2)
        back = start - delay
        y[start:end] = gain * (h0 * y[back : back + end - start] + h1 * y[back - 1 : end - delay - 1] + h2 * y[back - 2 : end - delay - 2])
    out = y[2:]
    out[n_hold:] *= np.linspace(1.0, 0.0, n - n_hold)  # damp the string at note-off
    return out / (np.abs(out).max() + 1e-9)


VOICES = {
    "piano": _piano,
    "organ": _organ,
    "guitar": _karplus_strong,
    "pad": _pad,
    "synth": _synth,
    "flute": _flute,
    "bass": _bass,
}


# --------------------------------------------------------------------------- drums


def _drum_kit(sr: int, rng) -> dict[str, np.ndarray]:
    """Synthesise one kit per clip, with a little random tuning."""
    def decaying(seconds, tau):
        t = np.arange(int(seconds * sr)) / sr
        return t, np.exp(-t / tau)

    t, env = decaying(0.4, 0.12)
    sweep = 45.0 + rng.uniform(90, 130) * np.exp(-t / 0.035)  # the pitch drop makes the thump
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sr) * env
    kick[: int(0.003 * sr)] += 0.3 * rng.standard_normal(int(0.003 * sr))

    t, env = decaying(0.25, 0.07)
    rattle = np.diff(rng.standard_normal(t.size + 1))  # differencing tilts noise to the highs
    body = np.sin(2 * np.pi * rng.uniform(170, 210) * t) * np.exp(-t / 0.05)
    snare = 0.5 * rattle * env + 0.6 * body

    def metal(seconds, tau):
        t, env = decaying(seconds, tau)
        hiss = np.diff(rng.standard_normal(t.size + 2), n=2) / 2.0
        return hiss * env

    kit = {"kick": kick, "snare": snare, "hat": metal(0.08, 0.02), "ride": metal(0.4, 0.12)}
    return {name: sound / np.abs(sound).max() for name, sound in kit.items()}


_DRUM_GAIN = {"kick": 0.8, "snare": 0.5, "hat": 0.18, "ride": 0.16}
_PART_GAIN = {"melody": 0.5, "chords": 0.13, "bass": 0.4}
# Final peak level by dynamics: soft clips stay soft after normalisation.
PEAK_LEVEL = {"soft": 0.35, "loud": 0.9, "crescendo": 0.85}


def _mix_in(buffer: np.ndarray, start: int, sound: np.ndarray) -> None:
    if start >= buffer.size:
        return
    if start < 0:
        sound, start = sound[-start:], 0
    end = min(buffer.size, start + sound.size)
    buffer[start:end] += sound[: end - start]


def _midi_to_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def render_clip(
    attributes: ClipAttributes,
    rng=None,
    sample_rate: int = SAMPLE_RATE,
    seconds: float = 6.0,
    timing_jitter: float = 0.0,
    detune: float = 0.0,
) -> np.ndarray:
    """Render a clip as float32 mono audio, peak-normalised to its dynamics level.

    `rng` is a numpy Generator or an int seed. `timing_jitter` and `detune` are
    severities in [0, 1]: onsets scattered by up to ~70 ms (s.d.) and pitches by up
    to ~45 cents per note plus ~35 cents per part.
    """
    rng = _as_rng(rng)
    score = compose(attributes, seconds, rng)
    n = int(round(seconds * sample_rate))
    mix = np.zeros(n)
    jitter_s = 0.07 * timing_jitter

    def start_of(onset: float) -> int:
        if jitter_s > 0:
            onset = max(0.0, onset + rng.normal(0.0, jitter_s))
        return int(round(onset * sample_rate))

    parts = (("melody", score.melody, attributes.instrument), ("chords", score.chords, attributes.accompaniment), ("bass", score.bass, "bass"))
    for part, notes, instrument in parts:
        voice = VOICES[instrument]
        part_cents = rng.normal(0.0, 35.0 * detune) if detune > 0 else 0.0
        for note in notes:
            cents = part_cents + (rng.normal(0.0, 45.0 * detune) if detune > 0 else 0.0)
            freq = _midi_to_hz(note.pitch + cents / 100.0)
            tone = voice(freq, max(1, int(note.duration * sample_rate)), sample_rate, note.velocity, rng)
            _mix_in(mix, start_of(note.onset), _PART_GAIN[part] * note.velocity * tone)

    kit = _drum_kit(sample_rate, rng)
    for hit in score.drums:
        _mix_in(mix, start_of(hit.onset), _DRUM_GAIN[hit.drum] * hit.velocity * kit[hit.drum])

    mix -= mix.mean()
    peak = np.abs(mix).max()
    if peak > 0:
        mix *= PEAK_LEVEL[attributes.dynamics] / peak
    return mix.astype(np.float32)
