"""deramos.data.realmusic.phrasing: people-style prompts, their assertions, counterfactual pairs and
prompts about things that are not music. Prompts are parsed back with the module's own tables:
the text must say exactly what the assertion says."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from deramos.data.realmusic import phrasing
from deramos.data.realmusic.attributes import (
    DRUMS,
    FAMILIES,
    GENRES,
    TEMPLATE_KINDS,
    RealAttributes,
    asserted_ta,
    assertion_matches,
    assertion_of,
    check_assertion,
    prompt_for,
    random_attributes,
)
from deramos.data.realmusic.phrasing import (
    KIND_COUNT_WEIGHTS,
    SHAPES,
    SYNONYMS,
    compose,
    counterfactual_pair,
    describe,
    unrelated_prompt,
    wrong_description,
)
from deramos.data.synth.music import TEMPO_BANDS, tempo_word

N = 5000
# Every phrase of every table, longest first, so "synth bass" is read before "synth".
PHRASES = sorted(((w.lower(), kind, value) for kind, table in SYNONYMS.items() for value, words in table.items()
                  for w in words), key=lambda entry: -len(entry[0]))
BPM = re.compile(r"(\d+)\s*(?:bpm|beats per minute)|(?:tempo|bpm):?\s*(\d+)")


def spoken(text: str) -> dict:
    """What a prompt says, read back with the synonym tables: kind -> value (instrument -> set
    of families, tempo_bpm -> the number)."""
    text, said = text.lower(), {}
    for phrase, kind, value in PHRASES:
        pattern = re.compile(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])")
        while match := pattern.search(text):
            text = text[:match.start()] + "#" * len(phrase) + text[match.end():]   # consumed
            if kind == "instrument":
                said.setdefault(kind, set()).add(value)
            else:
                assert said.setdefault(kind, value) == value, f"{kind} said two ways"
    numbers = {float(a or b) for a, b in BPM.findall(text)}
    if numbers:
        said["tempo_bpm"] = numbers.pop()
        assert not numbers
    return said


def as_said(assertion: dict) -> dict:
    return {k: set(v) if k == "instrument" else v for k, v in assertion.items()}


def kinds_of(assertion: dict) -> set[str]:
    return {"tempo" if k == "tempo_bpm" else k for k in assertion}


def clip(rng) -> RealAttributes:
    """A score (classical, no drums, no other families) or an arrangement of any genre."""
    attrs = random_attributes(rng)
    if rng.random() < 0.5:
        return attrs
    leads = [f for f in FAMILIES if f != "bass"]
    others = tuple(str(f) for f in rng.choice([f for f in FAMILIES if f != attrs.instrument],
                                              size=int(rng.integers(1, 4)), replace=False))
    return replace(attrs, instrument=str(rng.choice(leads)), genre=str(rng.choice(GENRES)),
                   drums=str(rng.choice(DRUMS)), others=tuple(o for o in others))


@pytest.fixture(scope="module")
def generated():
    rng = np.random.default_rng(7)
    out = []
    for i in range(N):
        attrs = clip(rng)
        out.append((attrs, compose(attrs, rng, wrong=i % 2 == 1), i % 2 == 1))
    return out


def test_vocabulary_has_no_phrase_in_two_places():
    seen = Counter(phrase for phrase, _, _ in PHRASES)
    assert [p for p, n in seen.items() if n > 1] == []
    assert set(SYNONYMS["instrument"]) == set(FAMILIES) and set(SYNONYMS["genre"]) == set(GENRES)


def test_assertions_are_valid_and_true_or_false_as_asked(generated):
    for attrs, prompt, wrong in generated:
        assert check_assertion(prompt.assertion) == prompt.assertion
        matches = assertion_matches(prompt.assertion, attrs)
        assert (not all(matches.values())) if wrong else all(matches.values()), (prompt, attrs)


def test_text_says_exactly_what_the_assertion_says(generated):
    for _, prompt, _ in generated:
        assert spoken(prompt.text) == as_said(prompt.assertion), prompt


def test_numeric_tempo_stays_in_the_band(generated):
    numeric = 0
    for attrs, prompt, wrong in generated:
        bpm = prompt.assertion.get("tempo_bpm")
        if bpm is None or wrong:
            continue
        numeric += 1
        low, high = TEMPO_BANDS[attrs.tempo_word]
        assert low <= bpm <= high and abs(bpm - attrs.tempo_bpm) <= phrasing.BPM_JITTER + 0.5 + max(
            0.0, low - attrs.tempo_bpm, attrs.tempo_bpm - high)
        assert tempo_word(bpm) == attrs.tempo_word
    assert numeric > 100


def test_lengths_shapes_and_kind_counts_are_as_designed(generated):
    words = [len(p.text.split()) for _, p, _ in generated]
    assert 1 <= min(words) and max(words) <= 30
    shapes = Counter(p.shape for _, p, _ in generated)
    assert len(shapes) >= 12 and set(shapes) == set(SHAPES)
    counts = Counter(min(len(kinds_of(p.assertion)), 4) for _, p, _ in generated)
    for count, weight in KIND_COUNT_WEIGHTS.items():
        assert abs(counts[count] / N - weight) < 0.03, counts
    kinds = Counter(k for _, p, _ in generated for k in kinds_of(p.assertion))
    assert kinds.most_common(1)[0][0] == "instrument"
    assert sum("tempo_bpm" in p.assertion for _, p, _ in generated) > 0.25 * kinds["tempo"]


def test_drums_only_named_where_meaningful(generated):
    for attrs, prompt, _ in generated:
        if "drums" in prompt.assertion:
            assert attrs.genre != "classical" or attrs.drums == "drums"


def test_not_the_template_shape():
    rng = np.random.default_rng(3)
    for _ in range(500):
        attrs = random_attributes(rng)
        text, assertion = describe(attrs, rng)
        assert not set(TEMPLATE_KINDS) <= kinds_of(assertion)
        assert text != prompt_for(attrs)


def test_kinds_are_honoured():
    rng = np.random.default_rng(4)
    attrs = RealAttributes(instrument="saxophone", others=("bass",), genre="jazz", drums="drums", tempo_bpm=95.0)
    text, assertion = describe(attrs, rng, kinds=("genre", "drums"))
    assert assertion == {"genre": "jazz", "drums": "drums"} and spoken(text) == assertion
    _, wrong = wrong_description(attrs, rng, kinds=("mood",))
    assert wrong == {"mood": "minor"}


def test_deterministic_for_a_seed():
    def run(seed):
        rng = np.random.default_rng(seed)
        attrs = clip(rng)
        return (describe(attrs, rng), wrong_description(attrs, rng), unrelated_prompt(rng),
                counterfactual_pair(attrs, attrs, 3.0, rng))
    assert run(11) == run(11) and run(11) != run(12)


def test_unrelated_prompts_name_nothing_and_are_varied():
    rng = np.random.default_rng(5)
    prompts = [unrelated_prompt(rng) for _ in range(N)]
    for text in prompts:
        assert spoken(text) == {}, text
        assert 1 <= len(text.split()) <= 30
    assert len(set(prompts)) >= 3000
    assert len({p.lower().rstrip(".!") for p in prompts}) >= 3000   # not only by casing


def test_counterfactual_pair_shifts_by_the_asserted_ta():
    rng = np.random.default_rng(6)
    asked = RealAttributes(instrument="piano", ensemble="solo", tempo_bpm=70.0, mode="minor", dynamics="soft")
    heard = replace(asked, mode="major")   # the system missed the mood
    own = assertion_of(asked)
    base = asserted_ta(assertion_matches(own, heard))
    seen = set()
    for _ in range(300):
        state = rng.bit_generator.state
        text, ta = counterfactual_pair(asked, heard, 3.0, rng)
        # replay the draw to learn the assertion behind the text
        replay = np.random.default_rng()
        replay.bit_generator.state = state
        sources = phrasing.COUNTERFACTUAL_SOURCES
        source = str(replay.choice(list(sources), p=list(sources.values())))
        _, new = (wrong_description(heard, replay) if source == "wrong"
                  else describe(asked if source == "asked" else heard, replay))
        expected = np.clip(3.0 + asserted_ta(assertion_matches(new, heard)) - base, 1.0, 5.0)
        assert ta == pytest.approx(expected, abs=1e-3) and spoken(text) == as_said(new)
        seen.add(round(ta, 3))
    assert len(seen) > 3 and min(seen) < 3.0 < max(seen)
    own_text, own_ta = counterfactual_pair(asked, heard, 3.0, np.random.default_rng(0), own={"tempo": "slow"})
    assert own_text and 1.0 <= own_ta <= 5.0
