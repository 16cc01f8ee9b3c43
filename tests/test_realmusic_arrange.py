"""deramos-realmusic arrangements: the MIDI writer, every style's parts, rendered bass energy,
disjoint train/held-out sources, and a tiny arrangement-only corpus."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deramos.data.realmusic.arrange import (
    DRUM_CHANNEL,
    STYLES,
    Song,
    Track,
    Tune,
    arrange,
    midi_bytes,
    random_arrangement_attributes,
    write_midi,
)
from deramos.data.realmusic.attributes import FAMILIES, GENRES, RealAttributes
from deramos.data.realmusic.corpus import SOURCES
from deramos.data.realmusic.render import SOUNDFONT_DIRS

pytest.importorskip("music21")

# "Cuckoo's Nest" opening, 4/4 in D major with its chord symbols (nottingham-dataset style)
TUNE = Tune("test", tuple((i * 0.5, 0.5, p) for i, p in enumerate([69, 74, 74, 73, 74, 76, 78, 74] * 4)),
            ((0.0, 2, False), (4.0, 4, True), (6.0, 9, False), (8.0, 2, False), (12.0, 7, False)), 4.0, 2, "major")


def _read(data: bytes, tmp_path: Path):
    """(format, tempo µs per quarter, [(channel, program or None, [note-on pitches])]) via music21's MIDI reader."""
    from music21 import midi

    path = tmp_path / "song.mid"
    path.write_bytes(data)
    reader = midi.MidiFile()
    reader.open(str(path))
    reader.read()
    reader.close()
    tempo, tracks = None, []
    for track in reader.tracks:
        channels, program, pitches = set(), None, []
        for event in track.events:
            if event.type == midi.MetaEvents.SET_TEMPO:
                tempo = int.from_bytes(event.data, "big")
            elif event.type == midi.ChannelVoiceMessages.PROGRAM_CHANGE:
                program = event.data
            elif event.type == midi.ChannelVoiceMessages.NOTE_ON and event.velocity > 0:
                channels.add(event.channel - 1)     # music21 counts channels from 1
                pitches.append(event.pitch)
        if pitches:
            assert len(channels) == 1
            tracks.append((channels.pop(), program, pitches))
    return reader.format, tempo, tracks


def test_midi_writer_bytes_parse_back(tmp_path):
    song = Song(125.0, (Track(0, 81, ((0.0, 1.0, 72, 100), (1.0, 0.5, 74, 90))),
                        Track(DRUM_CHANNEL, None, ((0.0, 0.1, 36, 100), (0.5, 0.1, 42, 80)))), ((2, False),), 4.0)
    fmt, tempo, tracks = _read(midi_bytes(song), tmp_path)
    assert fmt == 1 and tempo == 480_000
    assert tracks == [(0, 81, [72, 74]), (DRUM_CHANNEL, None, [36, 42])]


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_has_its_parts(style, tmp_path):
    rng = np.random.default_rng(3)
    asked = replace(random_arrangement_attributes(rng, [style]), ensemble="full")
    asked = replace(asked, others=("bass", STYLES[style].comps[0]))
    song = arrange(TUNE, asked, 1, 6.0, rng)
    _, tempo, tracks = _read(midi_bytes(song), tmp_path)
    channels = {channel: (program, pitches) for channel, program, pitches in tracks}
    assert (DRUM_CHANNEL in channels) == STYLES[style].drums == (asked.drums == "drums")
    assert channels[0][0] in FAMILIES[asked.instrument][1] and asked.instrument in STYLES[style].leads
    assert channels[2][0] in FAMILIES[asked.others[1]][1]
    # one chord a bar: the tune's own symbol sounding at the bar's start (the A at beat 3 is not)
    assert song.chords[:4] == ((2, False), (4, True), (2, False), (7, False))
    roots = {root for root, _ in song.chords}
    assert {p % 12 for p in channels[1][1]} <= roots and max(channels[1][1]) < 52
    assert STYLES[style].tempo[0] <= 60_000_000 / tempo <= STYLES[style].tempo[1] + 0.1


def test_sparse_and_drumless_arrangements_leave_parts_out():
    rng = np.random.default_rng(0)
    asked = RealAttributes(instrument="synth", ensemble="solo", tempo_bpm=120.0, genre="electronic", drums="no drums")
    song = arrange(TUNE, asked, 0, 4.0, rng)
    assert [t.channel for t in song.tracks] == [0]


def _renderable() -> bool:
    return shutil.which("fluidsynth") is not None and any((d / "FluidR3_GM.sf2").is_file() for d in SOUNDFONT_DIRS)


def _low_share(audio: np.ndarray, rate: int = 16000) -> float:
    """Share of the spectrum's energy below 150 Hz."""
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1.0 / rate)
    return float(power[freqs < 150].sum() / power.sum())


@pytest.mark.skipif(not _renderable(), reason="needs fluidsynth and fluid-soundfont-gm (apt-get install fluidsynth fluid-soundfont-gm)")
def test_rendered_bass_puts_energy_in_the_low_band(tmp_path):
    from deramos.data.realmusic.render import find_soundfont, render_midi

    heard = RealAttributes(instrument="flute", ensemble="small", tempo_bpm=100.0, genre="folk", drums="no drums",
                           others=("bass",))
    shares = {}
    for name, attrs in (("bass", heard), ("solo", replace(heard, ensemble="solo", others=()))):
        song = arrange(TUNE, attrs, 0, 4.0, np.random.default_rng(1))
        audio = render_midi(write_midi(song, tmp_path / f"{name}.mid"), find_soundfont("FluidR3_GM.sf2"), 16000)
        shares[name] = _low_share(audio[:4 * 16000])
    assert shares["bass"] > 0.2 and shares["solo"] < 0.02, shares


def test_train_and_heldout_sources_are_disjoint():
    train, held = SOURCES["train"], SOURCES["heldout"]
    for key in ("tunes", "soundfonts", "recordings", "composers"):
        assert not set(train[key]) & set(held[key]), key
    pairs = [{(s, v) for s, vs in SOURCES[w]["variants"].items() for v in vs} for w in ("train", "heldout")]
    assert pairs[0] and pairs[1] and not pairs[0] & pairs[1]
    assert set(STYLES) <= set(GENRES) and all(len(s.variants) >= 2 for s in STYLES.values())


@pytest.mark.skipif(not _renderable(), reason="needs fluidsynth and fluid-soundfont-gm (apt-get install fluidsynth fluid-soundfont-gm)")
def test_tiny_arrangement_corpus(tmp_path):
    from deramos.data.realmusic.corpus import build_corpus

    summary = build_corpus(tmp_path, "train", systems=2, clips_per_system=3, recording_share=0.0, pieces=1,
                           seconds=4.0, seed=2, workers=1, progress=False, arrangement_share=1.0, tunes=12)
    assert summary["arrangements"] == 6 and summary["clips"] == 6
    assert summary["tune_collections"] == ["ryansMammoth", "oneills1850"]
    sources = json.loads((tmp_path / "sources.json").read_text())
    assert sources["tune_licence"].startswith("BSD-3-Clause")
    for line in (tmp_path / "synth_meta.jsonl").read_text().splitlines():
        record = json.loads(line)
        heard = RealAttributes.from_dict(record["rendered_attributes"])
        assert record["kind"] == "arrangement" and heard.genre in STYLES
        assert record["source"]["variant"] in SOURCES["train"]["variants"][heard.genre]
        channels = [channel for channel, _ in record["source"]["tracks"]]
        assert (DRUM_CHANNEL in channels) == (heard.drums == "drums")
        assert ("bass" in heard.others) == (1 in channels) and len(heard.others) == len(channels) - 1 - (DRUM_CHANNEL in channels)
