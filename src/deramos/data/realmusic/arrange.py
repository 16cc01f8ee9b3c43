"""Folk and lead-sheet tunes from music21's corpus arranged as General-MIDI songs in a style.

The scores alone are classical: no drums, no bass lines, no pop/rock/electronic/jazz/folk or
chiptune. Here a tune's melody gets a lead program, chords (its own chord symbols, or one
diatonic triad per bar guessed from the bar's melody), a bass on the chord roots and a drum
groove on MIDI channel 10, at a tempo in the style's range; a small standard-MIDI-file writer
puts it on disk and fluidsynth (render.render_midi) plays it.

Times are in quarter notes ("q") until the MIDI writer turns them into ticks.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .attributes import DYNAMICS, ENSEMBLES, FAMILIES, GENRES, VELOCITY, RealAttributes, change_attribute

TICKS = 480                 # ticks per quarter note in the files written here
DRUM_CHANNEL = 9            # MIDI channel 10, counted from 0
DRUM_NOTES = {"K": 36, "S": 38, "H": 42, "O": 46, "R": 51, "C": 49, "P": 39}   # kick snare hat open ride crash clap
TUNE_COLLECTIONS = ("ryansMammoth", "oneills1850", "essenFolksong", "nottingham-dataset", "airdsAirs", "miscFolk")


@dataclass(frozen=True)
class Variant:
    """One groove and voicing: 16 steps per 4 quarters (a 3-quarter bar plays the first 12)."""

    drums: dict                 # drum letter (DRUM_NOTES) -> 16-step string, "x" hit, "a" accent
    bass: str                   # 16 steps: "r" root, "o" root an octave up, "-" hold, "." rest
    comp: str                   # 16 steps: "x" chord (held to the next step that is not "-"), "a" arpeggio note
    sevenths: bool = False      # chords with their seventh (jazz)
    swing: float = 0.0          # off-beat eighths delayed by this many quarters


@dataclass(frozen=True)
class Style:
    leads: tuple[str, ...]      # families that may carry the melody
    comps: tuple[str, ...]      # families that may play the chords
    drums: bool
    tempo: tuple[float, float]  # BPM range
    octave: int                 # the melody is moved by this many octaves
    variants: tuple[Variant, ...]


def _v(drums="", bass="r-------r-------", comp="x-------x-------", **kw) -> Variant:
    pairs = dict(part.split("=") for part in drums.split()) if drums else {}
    return Variant(pairs, bass, comp, **kw)


STYLES = {
    "pop": Style(("piano", "electric_piano", "synth", "guitar", "flute"), ("piano", "electric_piano", "guitar"),
                 True, (88.0, 124.0), 0, (
        _v("K=x.......x.x..... S=....x.......x... H=x.x.x.x.x.x.x.x.", "r-.rr-.rr-.rr-.r", "x-x-x-x-x-x-x-x-"),
        _v("K=x..x..x...x..... S=....x.......x... H=xxxxxxxxxxxxxxxx", "r--r--r-r--r--r-", "x--x--x-x--x--x-"),
        _v("K=x.......x....... P=....x.......x... H=..x...x...x...x.", "r-------r---o---", "aaaaaaaaaaaaaaaa"),
    )),
    "rock": Style(("electric_guitar", "organ", "synth"), ("electric_guitar", "organ", "piano"), True, (104.0, 150.0), 0, (
        _v("K=x.x.....x.x..... S=....x.......x... H=x.x.x.x.x.x.x.x. C=x...............", "rrrrrrrrrrrrrrrr", "x-x-x-x-x-x-x-x-"),
        _v("K=x.....x.x....... S=....x.......x... O=x.x.x.x.x.x.x.x.", "r.r.r.r.r.r.o.r.", "x-------x-x-----"),
        _v("K=x...x...x...x... S=....x..x....x... H=xxxxxxxxxxxxxxxx", "r-r-r-r-r-r-r-r-", "x--x--x---x--x--"),
    )),
    "electronic": Style(("synth",), ("synth", "electric_piano"), True, (118.0, 136.0), 0, (
        _v("K=x...x...x...x... P=....x.......x... H=..x...x...x...x.", ".r.r.r.r.r.r.r.r", "x.x..x.x..x..x.."),
        _v("K=x...x...x...x... S=....x.......x... O=..x...x...x...x. H=xxxxxxxxxxxxxxxx", "rrorrrorrrorrror", "aaaaaaaaaaaaaaaa"),
        _v("K=x..x..x...x..x.. P=....x.......x... H=x.xxx.xxx.xxx.xx", "r..r..r.r..r..r.", "x-------x-------"),
    )),
    "jazz": Style(("saxophone", "piano", "brass", "mallets", "guitar"), ("piano", "electric_piano", "guitar"),
                  True, (84.0, 170.0), 0, (
        _v("R=x...x.xx..x.xx K=x.......x....... H=....x.......x...", "r---r---o---r---", "..x-....x-......", sevenths=True, swing=0.17),
        _v("R=x...x.x.x...x.x. H=....x.......x...", "r-------o-------", "x-------..x-----", sevenths=True, swing=0.12),
        _v("R=x.xxx.xxx.xxx.xx S=.........x...... K=x...............", "r---o---r---o---", "x-----x---x-----", sevenths=True, swing=0.2),
    )),
    "folk": Style(("flute", "guitar", "strings", "woodwinds"), ("guitar", "piano"), False, (78.0, 118.0), 0, (
        _v("", "r-------o-------", "x---x---x---x---"),
        _v("", "r-----------o---", "aaaaaaaaaaaaaaaa"),
        _v("", "r---o---r---o---", "x-x-x-x-x-x-x-x-"),
    )),
    "chiptune": Style(("synth",), ("synth",), True, (124.0, 168.0), 1, (
        _v("K=x.......x....... S=....x.......x... H=x.x.x.x.x.x.x.x.", "roroororroroorro", "aaaaaaaaaaaaaaaa"),
        _v("K=x...x...x...x... S=....x.......x...", "r.r.o.r.r.r.o.r.", "a.a.a.a.a.a.a.a."),
        _v("K=x..x....x..x.... P=....x.......x... H=xxxxxxxxxxxxxxxx", "r-r-r-r-o-o-o-o-", "x.x.x.x.x.x.x.x."),
    )),
}
assert set(STYLES) <= set(GENRES)
BASS_PROGRAMS = {"pop": 33, "rock": 34, "electronic": 38, "jazz": 32, "folk": 32, "chiptune": 38}


# --------------------------------------------------------------------------- tunes


@dataclass(frozen=True)
class Tune:
    """A melody with what arranging needs; pure data so worker processes share it cheaply."""

    name: str
    notes: tuple[tuple[float, float, int], ...]   # (onset q from the first full bar, length q, MIDI pitch)
    chords: tuple[tuple[float, int, bool], ...]   # (onset q, root pitch class, minor) from chord symbols
    bar: float                                    # quarters per bar
    tonic: int                                    # pitch class of the key
    mode: str                                     # "major" | "minor"


def tune_texts(path: Path) -> list[str]:
    """The tunes of one ABC file (collections hold many per file), each from its X: line."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [chunk for chunk in re.split(r"(?m)^(?=X:)", text) if chunk.startswith("X:")]


def collection_files(collection: str) -> list[Path]:
    from music21 import corpus

    paths = corpus.corpora.CoreCorpus().getPaths(fileExtensions=("abc",))
    return sorted(Path(p) for p in paths if Path(p).parent.name == collection)


def parse_tune(text: str, name: str) -> Tune | None:
    """A Tune from one ABC tune, or None when it has no usable melody or a modal key."""
    from music21 import converter, harmony, stream

    score = converter.parse(text, format="abc")
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    part = score.parts[0] if score.parts else score
    measures = list(part.getElementsByClass("Measure"))
    signature = part.recurse().getElementsByClass("TimeSignature").first()
    bar = float(signature.barDuration.quarterLength) if signature else 4.0
    full = [m for m in measures if abs(float(m.duration.quarterLength) - bar) < 1e-6]
    start = float(full[0].offset) if full else 0.0
    key = score.analyze("key")
    if key.mode not in ("major", "minor"):
        return None
    notes, chords = [], []
    for element in part.flatten().notes:
        onset = float(element.offset) - start
        if isinstance(element, harmony.ChordSymbol):
            root = element.root()
            third = (root.pitchClass + 3) % 12 in {p.pitchClass for p in element.pitches}
            chords.append((max(onset, 0.0), root.pitchClass, third))
        elif onset >= 0 and element.duration.quarterLength > 0 and not element.duration.isGrace:
            pitch = max(element.pitches, key=lambda p: p.midi) if element.isChord else element.pitch
            notes.append((onset, float(element.duration.quarterLength), int(pitch.midi)))
    if len(notes) < 8:
        return None
    return Tune(name, tuple(notes), tuple(chords), bar, key.tonic.pitchClass, key.mode)


def tune_pool(collections, count: int, rng, problems: list[str]) -> list[Tune]:
    """`count` parsable tunes drawn at random from these collections."""
    texts = [(f"{path.parent.name}/{path.name}#{i}", t) for c in collections
             for path in collection_files(c) for i, t in enumerate(tune_texts(path))]
    pool = []
    for index in rng.permutation(len(texts)):
        if len(pool) >= count:
            break
        name, text = texts[index]
        try:
            tune = parse_tune(text, name)
        except Exception as error:   # music21 raises many kinds on odd ABC
            problems.append(f"{name}: skipped ({type(error).__name__})")
            continue
        if tune is not None:
            pool.append(tune)
    return pool


def tune_bars(tune: Tune) -> int:
    """Bars up to and including the one holding the last onset."""
    return int(tune.notes[-1][0] // tune.bar) + 1


# --------------------------------------------------------------------------- chords

MAJOR_TRIADS = ((0, False), (2, True), (4, True), (5, False), (7, False), (9, True))   # I ii iii IV V vi
MINOR_TRIADS = ((0, True), (3, False), (5, True), (7, False), (8, False), (10, False))  # i III iv V VI VII


def bar_chords(tune: Tune, bars: int) -> list[tuple[int, bool]]:
    """(root pitch class, minor) per bar: the tune's chord symbol sounding at the bar's start,
    else the diatonic triad holding most of the bar's melody (ties go to I, then V, IV)."""
    out = []
    for b in range(bars):
        lo = (b % tune_bars(tune)) * tune.bar
        sounding = [c for c in tune.chords if c[0] <= lo + 1e-6] or [c for c in tune.chords if c[0] < lo + tune.bar]
        if sounding:
            out.append((sounding[-1][1], sounding[-1][2]))
            continue
        weights = np.zeros(12)
        for onset, length, pitch in tune.notes:
            overlap = min(onset + length, lo + tune.bar) - max(onset, lo)
            if overlap > 0:
                weights[pitch % 12] += overlap * (1.5 if abs(onset - lo) < 1e-6 else 1.0)
        triads = MAJOR_TRIADS if tune.mode == "major" else MINOR_TRIADS
        scores = []
        for rank, (step, minor) in enumerate(triads):
            root = (tune.tonic + step) % 12
            tones = (root, (root + (3 if minor else 4)) % 12, (root + 7) % 12)
            scores.append(sum(weights[t] for t in tones) + 0.6 * weights[root] - 0.01 * (0, 3, 4, 2, 1, 5)[rank])
        step, minor = triads[int(np.argmax(scores))]
        out.append(((tune.tonic + step) % 12, minor))
    return out


def chord_pitches(root: int, minor: bool, seventh: bool) -> list[int]:
    """A close root-position voicing between MIDI 52 and 72."""
    low = 52 + (root - 52) % 12
    tones = [low, low + (3 if minor else 4), low + 7] + ([low + (10 if minor else 10)] if seventh else [])
    return tones


# --------------------------------------------------------------------------- arranging


@dataclass(frozen=True)
class Track:
    channel: int                # 0-15; DRUM_CHANNEL for drums
    program: int | None         # GM program 0-127; None for drums
    notes: tuple[tuple[float, float, int, int], ...]   # (onset q, length q, MIDI pitch, velocity 1-127)


@dataclass(frozen=True)
class Song:
    tempo_bpm: float
    tracks: tuple[Track, ...]
    chords: tuple[tuple[int, bool], ...]        # per bar, as played
    bar: float


def _steps(pattern: str, bar: float) -> list[tuple[float, str, float]]:
    """(onset q, symbol, length q up to the next struck step) for one bar of a 16-step pattern."""
    count = int(round(bar * 4))
    cells = [pattern[i % len(pattern)] for i in range(count)]
    out = []
    for i, symbol in enumerate(cells):
        if symbol in ".-":
            continue
        j = i + 1
        while j < count and cells[j] == "-":
            j += 1
        out.append((i / 4.0, symbol, (j - i) / 4.0))
    return out


def _swung(onset: float, swing: float) -> float:
    return onset + swing if swing and abs(onset * 2 - round(onset * 2)) < 1e-6 and (onset * 2) % 2 == 1 else onset


def arrange(tune: Tune, heard: RealAttributes, variant: int, seconds: float, rng) -> Song:
    """The tune in `heard.genre`'s style and variant, with the parts `heard` says are audible:
    lead always, bass when "bass" is among heard.others, chords when another family is, drums
    when heard.drums == "drums"."""
    style = STYLES[heard.genre]
    groove = style.variants[variant % len(style.variants)]
    bars = int(np.ceil((seconds + 1.0) * heard.tempo_bpm / 60.0 / tune.bar)) + 1
    chords = bar_chords(tune, bars)
    loud = VELOCITY[heard.dynamics]
    tracks = [Track(0, int(rng.choice(FAMILIES[heard.instrument][1])), _lead(tune, bars, style.octave, loud, groove.swing))]
    comp = [f for f in heard.others if f != "bass"]
    if "bass" in heard.others:
        tracks.append(Track(1, BASS_PROGRAMS[heard.genre], _bass(chords, tune.bar, groove, loud)))
    if comp:
        tracks.append(Track(2, int(rng.choice(FAMILIES[comp[0]][1])), _comp(chords, tune.bar, groove, loud)))
    if heard.drums == "drums":
        tracks.append(Track(DRUM_CHANNEL, None, _drums(bars, tune.bar, groove, loud)))
    return Song(heard.tempo_bpm, tuple(tracks), tuple(chords), tune.bar)


def _lead(tune: Tune, bars: int, octave: int, loud: int, swing: float):
    span = bars * tune.bar
    length = tune_bars(tune) * tune.bar            # the tune loops when short
    shift = 12 * octave + (12 if max(p for _, _, p in tune.notes) < 60 else 0)
    notes, base = [], 0.0
    while base < span:
        for onset, dur, pitch in tune.notes:
            at = base + _swung(onset, swing)
            if at < span:
                accent = 10 if abs(onset / tune.bar - round(onset / tune.bar)) < 1e-6 else 0
                notes.append((at, min(dur, span - at), pitch + shift, min(127, loud + accent)))
        base += length
    return tuple(notes)


def _bass(chords, bar: float, groove: Variant, loud: int):
    notes = []
    for b, (root, _) in enumerate(chords):
        low = 28 + (root - 28) % 12          # E1..D#2
        for onset, symbol, length in _steps(groove.bass, bar):
            notes.append((b * bar + onset, length * 0.9, low + (12 if symbol == "o" else 0), min(127, loud + 5)))
    return tuple(notes)


def _comp(chords, bar: float, groove: Variant, loud: int):
    notes, velocity = [], max(1, int(loud * 0.7))
    for b, (root, minor) in enumerate(chords):
        tones = chord_pitches(root, minor, groove.sevenths)
        for k, (onset, symbol, length) in enumerate(_steps(groove.comp, bar)):
            at = b * bar + _swung(onset, groove.swing)
            played = [tones[k % len(tones)] + 12] if symbol == "a" else tones
            notes += [(at, length * 0.9, pitch, velocity) for pitch in played]
    return tuple(notes)


def _drums(bars: int, bar: float, groove: Variant, loud: int):
    notes = []
    for b in range(bars):
        for letter, pattern in groove.drums.items():
            for onset, symbol, _ in _steps(pattern, bar):
                if letter == "C" and b % 4:
                    continue                  # a crash opens every fourth bar only
                accent = 1.0 if onset == int(onset) else 0.8
                notes.append((b * bar + _swung(onset, groove.swing), 0.1, DRUM_NOTES[letter],
                              max(1, min(127, int(loud * accent)))))
    return tuple(notes)


def jittered(song: Song, beats: float, rng) -> Song:
    """Every pitched note's onset moved by a normal amount of `beats` quarters (sloppy
    timing); the drums, a machine's, stay on the grid."""
    if beats <= 0.0:
        return song
    tracks = tuple(t if t.channel == DRUM_CHANNEL else
                   replace(t, notes=tuple((max(0.0, o + float(rng.normal(0.0, beats))), d, p, v) for o, d, p, v in t.notes))
                   for t in song.tracks)
    return replace(song, tracks=tracks)


# --------------------------------------------------------------------------- MIDI file


def _varlen(value: int) -> bytes:
    """A MIDI variable-length quantity: 7 bits a byte, high bit set on all but the last."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _chunk(events: list[tuple[int, int, bytes]]) -> bytes:
    """An MTrk chunk from (tick, order, message) events; at one tick note-offs (order 0) go first."""
    body, now = bytearray(), 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        body += _varlen(tick - now) + message
        now = tick
    body += _varlen(0) + b"\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def midi_bytes(song: Song) -> bytes:
    """A format-1 standard MIDI file: a tempo track, then one track per part."""
    tempo = int(round(60_000_000 / song.tempo_bpm))          # microseconds per quarter
    chunks = [_chunk([(0, 1, b"\xff\x51\x03" + tempo.to_bytes(3, "big"))])]
    for track in song.tracks:
        events = [] if track.program is None else [(0, 1, bytes([0xC0 | track.channel, track.program]))]
        for onset, length, pitch, velocity in track.notes:
            on, off = int(round(onset * TICKS)), int(round((onset + max(length, 0.05)) * TICKS))
            events.append((on, 2, bytes([0x90 | track.channel, pitch & 0x7F, max(1, velocity) & 0x7F])))
            events.append((max(off, on + 1), 0, bytes([0x80 | track.channel, pitch & 0x7F, 0])))
        chunks.append(_chunk(events))
    return b"MThd" + struct.pack(">IHHH", 6, 1, len(chunks), TICKS) + b"".join(chunks)


def write_midi(song: Song, path: Path) -> Path:
    Path(path).write_bytes(midi_bytes(song))
    return Path(path)


# --------------------------------------------------------------------------- attributes


def audible_others(attributes: RealAttributes, comp: str) -> tuple[str, ...]:
    """What plays besides the lead for an ensemble: solo none, small a bass, full bass and chords."""
    return {"solo": (), "small": ("bass",), "full": ("bass", comp)}[attributes.ensemble]


def random_arrangement_attributes(rng, styles) -> RealAttributes:
    """What a system is asked for an arrangement: a style of `styles`, its lead and chord
    families, its drums, a tempo in its range, a mode, dynamics, ensemble small or full."""
    genre = str(rng.choice(list(styles)))
    style = STYLES[genre]
    base = RealAttributes(instrument=str(rng.choice(style.leads)), ensemble=str(rng.choice(["small", "full", "full"])),
                          tempo_bpm=round(float(rng.uniform(*style.tempo)), 1), mode=str(rng.choice(["major", "minor"])),
                          dynamics=str(rng.choice(DYNAMICS)), genre=genre, drums="drums" if style.drums else "no drums")
    return replace(base, others=audible_others(base, str(rng.choice(style.comps))))


def heard_arrangement(asked: RealAttributes, kinds, styles, rng) -> RealAttributes:
    """`asked` with `kinds` changed as a system gets them wrong, kept playable: a genre
    change stays among `styles`, and the families besides the lead follow the ensemble."""
    heard = asked
    for kind in kinds:
        if kind == "genre":
            others = [s for s in styles if s != heard.genre] or list(styles)
            heard = replace(heard, genre=str(rng.choice(others)))
        else:
            heard = change_attribute(heard, kind, rng)
    comps = [f for f in asked.others if f != "bass"] or [str(rng.choice(STYLES[heard.genre].comps))]
    return replace(heard, others=audible_others(heard, comps[0]))


assert set(ENSEMBLES) == {"solo", "small", "full"}
