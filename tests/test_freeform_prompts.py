"""The hand-written free-form TA prompt set (tests/data/freeform): schema, canonical values,
coverage minimums and the unrelated-text set."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from deramos.data.realmusic.attributes import check_assertion

DATA = Path(__file__).parent / "data" / "freeform"

# Hard-coded on purpose: the set is checked against this list, not whatever the code accepts today.
FAMILIES = {"piano", "harpsichord", "organ", "guitar", "strings", "brass", "woodwinds", "flute", "choir",
            "synth", "electric_piano", "electric_guitar", "saxophone", "mallets", "bass"}
VALUES = {
    "genre": {"classical", "pop", "rock", "electronic", "jazz", "folk", "chiptune", "ambient"},
    "drums": {"drums", "no drums"},
    "tempo": {"slow", "moderate", "fast"},
    "mood": {"major", "minor"},
    "dynamics": {"soft", "loud"},
    "ensemble": {"solo", "small", "full"},
}
KINDS = {"instrument", "tempo_bpm", *VALUES}
CATEGORIES = {"speech", "environment", "silence", "unrelated_instrument", "random_text", "sound_effect"}

MIN_PROMPTS, MIN_UNRELATED, MIN_PER_CATEGORY = 320, 70, 10
MIN_COVERAGE = {"instrument": 10, "genre": 15, "tempo": 25, "mood": 25, "dynamics": 15, "ensemble": 10,
                "drums": 15}
MIN_BPM_PROMPTS = 30

# Words an unrelated text may not contain: genres, moods, the instrument families and the words
# the prompt set uses for the other kinds (whole words, optional plural).
BANNED = """piano pianos harpsichord organ organs guitar guitars axe violin cello viola fiddle strings string
orchestra brass trumpet trombone horn horns tuba clarinet oboe bassoon woodwind woodwinds flute recorder
piccolo choir voices vocal synth synths synthesizer pads arpeggiator rhodes wurlitzer keys sax saxophone
vibraphone marimba xylophone glockenspiel mallet mallets bass 808 808s drum drums drumming beat percussion
backbeat breakbeat classical baroque pop rock jazz folk folky celtic electronic electronica edm techno house
synthwave chiptune 8-bit nes ambient happy sad dark bright cheerful joyful uplifting playful sunny
melancholic gloomy mournful brooding tense major minor soft loud quiet gentle delicate hushed powerful
intense booming slow fast upbeat mid-tempo tempo bpm energetic driving solo duo trio band ensemble""".split()
BANNED_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BANNED) + r")s?\b", re.IGNORECASE)


def band(bpm: float) -> str:
    return "slow" if bpm < 86 else ("moderate" if bpm <= 120 else "fast")


def load(name: str) -> list[dict]:
    rows = []
    for number, line in enumerate((DATA / name).read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{name}:{number} is blank"
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            pytest.fail(f"{name}:{number} does not parse: {error}")
    return rows


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return load("prompts.jsonl")


@pytest.fixture(scope="module")
def unrelated() -> list[dict]:
    return load("unrelated.jsonl")


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def kinds_of(asserts: dict) -> set[str]:
    return {"tempo" if kind == "tempo_bpm" else kind for kind in asserts}


def tempo_of(asserts: dict) -> str | None:
    if "tempo" in asserts:
        return asserts["tempo"]
    return band(float(asserts["tempo_bpm"])) if "tempo_bpm" in asserts else None


def test_prompt_rows_have_the_schema(prompts):
    assert len(prompts) >= MIN_PROMPTS
    for row in prompts:
        assert set(row) == {"id", "text", "asserts"}, row
        assert re.fullmatch(r"F\d{3,}", row["id"]), row
        assert isinstance(row["text"], str) and 2 <= len(row["text"].split()) <= 30, row
        assert isinstance(row["asserts"], dict), row


def test_ids_and_texts_are_unique(prompts, unrelated):
    ids = Counter(row["id"] for row in prompts + unrelated)
    assert not [i for i, n in ids.items() if n > 1]
    texts = Counter(normalised(row["text"]) for row in prompts + unrelated)
    assert not [t for t, n in texts.items() if n > 1]


def test_asserts_use_only_canonical_kinds_and_values(prompts):
    for row in prompts:
        asserts = row["asserts"]
        assert set(asserts) <= KINDS, row
        for kind, value in asserts.items():
            if kind == "instrument":
                assert isinstance(value, list) and 1 <= len(value) <= 3, row
                assert len(set(value)) == len(value) and set(value) <= FAMILIES, row
            elif kind == "tempo_bpm":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), row
                assert 30 <= value <= 250, row
            else:
                assert value in VALUES[kind], row
        check_assertion(asserts)   # the project's own validator agrees


def test_each_prompt_asserts_one_to_five_kinds(prompts):
    counts = Counter(len(kinds_of(row["asserts"])) for row in prompts)
    assert set(counts) <= {1, 2, 3, 4, 5}, counts
    share = {n: counts[n] / len(prompts) for n in counts}
    # the brief: ~35% one kind, 30% two, 20% three, 15% four or five
    assert 0.25 <= share.get(1, 0) <= 0.45, share
    assert 0.20 <= share.get(2, 0) <= 0.40, share
    assert 0.12 <= share.get(3, 0) <= 0.30, share
    assert 0.08 <= share.get(4, 0) + share.get(5, 0) <= 0.25, share


def test_tempo_words_agree_with_bpm(prompts):
    for row in prompts:
        asserts = row["asserts"]
        if "tempo" in asserts and "tempo_bpm" in asserts:
            assert band(asserts["tempo_bpm"]) == asserts["tempo"], row


def test_bpm_in_the_text_matches_the_annotation(prompts):
    for row in prompts:
        numbers = [int(n) for n in re.findall(r"(\d+)\s*bpm", row["text"], re.IGNORECASE)]
        if numbers:
            assert row["asserts"].get("tempo_bpm") == numbers[0], row
        else:
            assert "tempo_bpm" not in row["asserts"], row
    assert sum("tempo_bpm" in row["asserts"] for row in prompts) >= MIN_BPM_PROMPTS


def test_coverage_minimums(prompts):
    seen = Counter()
    for row in prompts:
        asserts = row["asserts"]
        for family in asserts.get("instrument", []):
            seen["instrument", family] += 1
        for kind in ("genre", "drums", "mood", "dynamics", "ensemble"):
            if kind in asserts:
                seen[kind, asserts[kind]] += 1
        if tempo_of(asserts):
            seen["tempo", tempo_of(asserts)] += 1
    short = []
    for kind, minimum in MIN_COVERAGE.items():
        for value in sorted(FAMILIES if kind == "instrument" else VALUES[kind]):
            if seen[kind, value] < minimum:
                short.append((kind, value, seen[kind, value], minimum))
    assert not short, short


def test_unrelated_rows(unrelated):
    assert len(unrelated) >= MIN_UNRELATED
    per = Counter()
    for row in unrelated:
        assert set(row) == {"id", "text", "category"}, row
        assert re.fullmatch(r"U\d{3,}", row["id"]), row
        assert row["category"] in CATEGORIES, row
        assert 2 <= len(row["text"].split()) <= 30, row
        per[row["category"]] += 1
    assert all(per[c] >= MIN_PER_CATEGORY for c in CATEGORIES), per


def test_unrelated_texts_name_no_music_attribute(unrelated):
    hits = [(row["id"], row["text"], BANNED_RE.findall(row["text"])) for row in unrelated
            if BANNED_RE.search(row["text"])]
    assert not hits, hits


def test_banned_word_check_catches_music_words():
    assert BANNED_RE.search("a sad song on the Piano")
    assert BANNED_RE.search("two drums and a house")
    assert not BANNED_RE.search("rain on a window")
