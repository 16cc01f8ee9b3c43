"""Scores from music21's corpus rendered to audio with fluidsynth and a General-MIDI soundfont.

music21 (PyPI, BSD-3-Clause) ships the scores; fluidsynth and the soundfonts are Debian
packages (fluidsynth, fluid-soundfont-gm, musescore-general-soundfont, timgm6mb-soundfont).
Everything here is deterministic for its arguments.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SOUNDFONT_DIRS = (Path("/usr/share/sounds/sf2"), Path("/usr/share/sounds/sf3"))
# Soundfont file -> (Debian package, licence), recorded with every corpus.
SOUNDFONTS = {
    "FluidR3_GM.sf2": ("fluid-soundfont-gm", "MIT"),
    "MuseScore_General.sf3": ("musescore-general-soundfont", "MIT"),
    "TimGM6mb.sf2": ("timgm6mb-soundfont", "GPL-2"),
}


class RenderError(RuntimeError):
    """A score or a recording could not be turned into audio (one line, names the item)."""


def find_soundfont(name: str) -> Path:
    for folder in SOUNDFONT_DIRS:
        if (folder / name).is_file():
            return folder / name
    package = SOUNDFONTS.get(name, ("?", ""))[0]
    raise RenderError(f"soundfont {name} not found in {', '.join(map(str, SOUNDFONT_DIRS))} "
                      f"(apt-get install {package})")


def fluidsynth_binary() -> str:
    found = shutil.which("fluidsynth")
    if found is None:
        raise RenderError("fluidsynth not found on PATH (apt-get install fluidsynth)")
    return found


@dataclass(frozen=True)
class Arrangement:
    """How to play a score: GM program per kept part, tempo, velocity, excerpt."""

    parts: tuple[int, ...]          # indices of the score's parts that play
    programs: tuple[int, ...]       # GM program (0-127) of each kept part
    tempo_bpm: float
    velocity: int                   # 1-127, scaled per note by the score's own accents
    start_measure: int = 1
    measures: int = 12


def arranged_score(score, arrangement: Arrangement, jitter_beats: float = 0.0, rng=None):
    """A new score with only the kept parts, their programs, one tempo and one loudness.

    `jitter_beats` > 0 moves every note onset by a normal random amount (timing sloppiness)."""
    from music21 import instrument, stream, tempo

    parts = list(score.parts)
    out = stream.Score()
    end = arrangement.start_measure + arrangement.measures - 1
    for index, program in zip(arrangement.parts, arrangement.programs):
        part = parts[index].measures(arrangement.start_measure, end)
        flat = part.flatten().notesAndRests.stream()
        player = stream.Part()
        voice = instrument.Instrument()
        voice.midiProgram = program
        player.insert(0, voice)
        player.insert(0, tempo.MetronomeMark(number=arrangement.tempo_bpm))
        first = min((n.offset for n in flat), default=0.0)
        for note in flat.notes:
            if note.duration.isGrace or note.duration.quarterLength <= 0:
                continue   # music21 writes these without a note-off: a sustained voice never ends
            moved = note.offset - first
            if jitter_beats > 0.0 and rng is not None:
                moved = max(0.0, moved + float(rng.normal(0.0, jitter_beats)))
            note.volume.velocity = arrangement.velocity
            player.insert(moved, note)
        out.insert(0, player)
    return out


def render_score(score, soundfont: Path, sample_rate: int = 16000, gain: float = 0.5) -> np.ndarray:
    """Mono float32 audio of a music21 score: MIDI file -> fluidsynth -> mixed down."""
    with tempfile.TemporaryDirectory(prefix="deramos-render-") as tmp:
        midi = Path(tmp) / "score.mid"
        try:
            score.write("midi", fp=str(midi))
        except Exception as error:   # music21 raises many kinds for odd scores
            raise RenderError(f"cannot write MIDI: {type(error).__name__}: {error}") from None
        return render_midi(midi, soundfont, sample_rate, gain)


def render_midi(midi: Path, soundfont: Path, sample_rate: int = 16000, gain: float = 0.5) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="deramos-render-") as tmp:
        wav = Path(tmp) / "out.wav"
        command = [fluidsynth_binary(), "-ni", "-q", "-g", str(gain), "-r", str(sample_rate),
                   "-F", str(wav), str(soundfont), str(midi)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise RenderError(f"fluidsynth did not finish {midi.name} within 300 s (a note never ends?)") from None
        if result.returncode != 0 or not wav.is_file():
            reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RenderError(f"fluidsynth failed on {midi.name}: {reason[0]}")
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RenderError(f"fluidsynth wrote {rate} Hz, expected {sample_rate}")
    return audio.mean(axis=1).astype(np.float32)


def trim(audio: np.ndarray, seconds: float, sample_rate: int, fade_seconds: float = 0.05) -> np.ndarray:
    """The first `seconds` after the leading silence, faded out at the cut."""
    loud = np.flatnonzero(np.abs(audio) > 1e-3)
    start = int(loud[0]) if loud.size else 0
    piece = audio[start:start + int(round(seconds * sample_rate))].copy()
    fade = min(len(piece), int(fade_seconds * sample_rate))
    if fade:
        piece[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return piece


def normalise(audio: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.abs(audio).max())
    if top < 1e-4:
        raise RenderError("rendered audio is silent")
    return (audio * (peak / top)).astype(np.float32)


def load_recording(path: Path, sample_rate: int = 16000, offset_seconds: float = 0.0,
                   seconds: float | None = None) -> np.ndarray:
    """Mono float32 at `sample_rate` from any file libsndfile reads (Ogg Vorbis included)."""
    import soxr

    try:
        info = sf.info(str(path))
        start = int(offset_seconds * info.samplerate)
        frames = -1 if seconds is None else int(seconds * info.samplerate)
        audio, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as error:
        raise RenderError(f"{path}: cannot read: {error}") from None
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)
