"""What a real-music clip sounds like, as prompt-level attributes, and what a prompt asserts.

The kinds: the lead instrument family (and the other families audible), the ensemble size,
tempo, mood (the mode of the key), dynamics, genre (the style a clip was arranged in, or
"classical" for a score as written) and whether drums play. A prompt asserts some of them:
an *assertion* is a dict kind -> canonical value (instrument -> a tuple of families), and the
simulated raters judge TA on the asserted kinds only (`asserted_ta`).
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..synth.music import TEMPO_BANDS, VOCABULARY, tempo_word

# family -> (prompt phrases, General-MIDI programs its parts are drawn from)
FAMILIES = {
    "piano": (("piano", "grand piano", "upright piano"), (0, 1)),
    "harpsichord": (("harpsichord", "baroque harpsichord"), (6,)),
    "organ": (("church organ", "pipe organ", "organ"), (19, 20)),
    "guitar": (("acoustic guitar", "nylon-string guitar", "guitar"), (24, 25)),
    "strings": (("strings", "bowed strings", "violins and cellos"), (40, 41, 42, 48)),
    "brass": (("brass", "trumpets and horns", "brass instruments"), (56, 57, 60, 61)),
    "woodwinds": (("woodwinds", "clarinets and oboes", "reed instruments"), (68, 69, 70, 71)),
    "flute": (("flute", "flutes", "recorders"), (72, 73, 74)),
    "choir": (("choir", "voices", "a vocal ensemble"), (52, 53)),
    "synth": (("synthesizer", "synth leads", "electronic synths"), (80, 81, 87)),
    "electric_piano": (("electric piano", "Rhodes piano", "electric keys"), (4, 5)),
    "electric_guitar": (("electric guitar", "overdriven guitar", "clean electric guitar"), (26, 27, 29, 30)),
    "saxophone": (("saxophone", "tenor sax", "alto sax"), (64, 65, 66)),
    "mallets": (("vibraphone", "marimba", "mallet percussion"), (11, 12, 13)),
    "bass": (("bass", "bass guitar", "synth bass"), (32, 33, 34, 38)),
}
# The families a classical score is given (the first ten); the rest came with arrangements.
SCORE_FAMILIES = tuple(FAMILIES)[:10]
# Styles a clip can be in: "classical" is a score as written; the others are arrangements
# (melody, chords, bass and drums) or recordings tagged so.
GENRES = ("classical", "pop", "rock", "electronic", "jazz", "folk", "chiptune", "ambient")
DRUMS = ("drums", "no drums")
# ensemble -> (prompt templates around the instrument phrase, how many parts play)
ENSEMBLES = {
    "solo": (("a solo {i}", "{i} alone", "a single line of {i}"), (1, 1)),
    "small": (("a small group of {i}", "a duo or trio of {i}", "two or three parts of {i}"), (2, 3)),
    "full": (("a full ensemble of {i}", "four or more parts of {i}", "rich, many-voiced {i}"), (4, 6)),
}
MODES = ("major", "minor")
DYNAMICS = ("soft", "loud")
VELOCITY = {"soft": 42, "loud": 108}
PEAK = {"soft": (0.15, 0.35), "loud": (0.6, 0.95)}   # output level follows the dynamics
PROMPT_KINDS = ("instrument", "ensemble", "tempo", "mood", "dynamics", "genre", "drums")
# The kinds a full template prompt names (prompt_for); genre and drums came with arrangements.
TEMPLATE_KINDS = ("instrument", "ensemble", "tempo", "mood", "dynamics")
# How much each kind matters to the simulated raters' TA (relative; asserted_ta normalises
# over the kinds a prompt asserts).
TA_WEIGHTS = {"instrument": 0.30, "ensemble": 0.15, "tempo": 0.20, "mood": 0.20, "dynamics": 0.15,
              "genre": 0.25, "drums": 0.15}

TEMPLATES = (
    "{A_tempo} {tempo}, {mood} piece for {ensemble}, {dynamics}.",
    "{Mood} music for {ensemble} at {a_tempo} {tempo} pace, {dynamics}.",
    "{Ensemble} playing something {tempo} and {mood}, {dynamics}.",
    "{Dynamics}: {a_mood} {mood}, {tempo} piece performed by {ensemble}.",
    "{A_mood} {mood} tune, {tempo}, for {ensemble}, {dynamics}.",
)


@dataclass(frozen=True)
class RealAttributes:
    instrument: str = "piano"
    ensemble: str = "full"
    tempo_bpm: float = 100.0
    mode: str = "major"
    dynamics: str = "loud"
    genre: str = "classical"
    drums: str = "no drums"
    # every family audible besides the lead (an arrangement's bass, chords); () for a score
    others: tuple[str, ...] = ()

    @property
    def families(self) -> tuple[str, ...]:
        return (self.instrument, *self.others)

    @property
    def tempo_word(self) -> str:
        return tempo_word(self.tempo_bpm)

    def kind_value(self, kind: str) -> str:
        return {"instrument": self.instrument, "ensemble": self.ensemble, "tempo": self.tempo_word,
                "mood": self.mode, "dynamics": self.dynamics, "genre": self.genre, "drums": self.drums}[kind]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RealAttributes":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "others" in values:
            values["others"] = tuple(values["others"])
        return cls(**values)


def random_attributes(rng: np.random.Generator) -> RealAttributes:
    low, high = TEMPO_BANDS[str(rng.choice(list(TEMPO_BANDS)))]
    return RealAttributes(instrument=str(rng.choice(list(SCORE_FAMILIES))), ensemble=str(rng.choice(list(ENSEMBLES))),
                          tempo_bpm=round(float(rng.uniform(low, high)), 1), mode=str(rng.choice(MODES)),
                          dynamics=str(rng.choice(DYNAMICS)))


def change_attribute(attributes: RealAttributes, kind: str, rng: np.random.Generator) -> RealAttributes:
    """A copy whose `kind` audibly differs."""
    def other(values, current):
        return str(rng.choice([v for v in values if v != current]))

    if kind == "tempo":
        low, high = TEMPO_BANDS[other(list(TEMPO_BANDS), attributes.tempo_word)]
        return replace(attributes, tempo_bpm=round(float(rng.uniform(low, high)), 1))
    leads = SCORE_FAMILIES if attributes.genre == "classical" else [f for f in FAMILIES if f != "bass"]
    choices = {"instrument": list(leads), "ensemble": list(ENSEMBLES), "mood": MODES, "dynamics": DYNAMICS,
               "genre": GENRES, "drums": DRUMS}
    if kind not in choices:
        raise ValueError(f"unknown attribute kind {kind!r}")
    field_name = "mode" if kind == "mood" else kind
    return replace(attributes, **{field_name: other(choices[kind], attributes.kind_value(kind))})


def mismatched(attributes: RealAttributes, rng: np.random.Generator,
               kinds: tuple[str, ...] | None = None) -> RealAttributes:
    """A copy with `kinds` (default: 2-3 kinds drawn at random) audibly different: what a
    wrong prompt for the clip describes."""
    if kinds is None:
        kinds = tuple(str(k) for k in rng.choice(TEMPLATE_KINDS, size=int(rng.integers(2, 4)), replace=False))
    for kind in kinds:
        attributes = change_attribute(attributes, kind, rng)
    return attributes


def attribute_matches(prompt: RealAttributes, heard: RealAttributes) -> dict[str, bool]:
    """Kind -> whether it is heard, for a full template prompt (the TEMPLATE_KINDS)."""
    return {kind: prompt.kind_value(kind) == heard.kind_value(kind) for kind in TEMPLATE_KINDS}


# --------------------------------------------------------------------------- assertions

ASSERTION_VALUES = {"ensemble": tuple(ENSEMBLES), "tempo": tuple(TEMPO_BANDS), "mood": MODES,
                    "dynamics": DYNAMICS, "genre": GENRES, "drums": DRUMS}


def check_assertion(asserts: dict) -> dict:
    """The assertion with canonical types (instrument a tuple); ValueError naming what is wrong."""
    if not asserts:
        raise ValueError("an assertion names at least one kind")
    out = {}
    for kind, value in asserts.items():
        if kind == "instrument":
            families = (value,) if isinstance(value, str) else tuple(value)
            unknown = [f for f in families if f not in FAMILIES]
            if not families or unknown:
                raise ValueError(f"instrument: unknown families {unknown or families!r}; choose from {sorted(FAMILIES)}")
            out[kind] = families
        elif kind == "tempo_bpm":
            out[kind] = float(value)
        elif kind in ASSERTION_VALUES:
            if value not in ASSERTION_VALUES[kind]:
                raise ValueError(f"{kind}: unknown value {value!r}; choose from {list(ASSERTION_VALUES[kind])}")
            out[kind] = value
        else:
            raise ValueError(f"unknown kind {kind!r}; choose from {sorted([*ASSERTION_VALUES, 'instrument', 'tempo_bpm'])}")
    if "tempo_bpm" in out and "tempo" in out and tempo_word(out["tempo_bpm"]) != out["tempo"]:
        raise ValueError(f"tempo {out['tempo']!r} disagrees with tempo_bpm {out['tempo_bpm']}")
    return out


def assertion_of(attributes: RealAttributes, kinds=TEMPLATE_KINDS) -> dict:
    """What a prompt naming `kinds` of these attributes asserts."""
    asserts = {}
    for kind in kinds:
        asserts[kind] = (attributes.instrument,) if kind == "instrument" else attributes.kind_value(kind)
    return asserts


def assertion_matches(asserts: dict, heard: RealAttributes) -> dict[str, bool]:
    """Asserted kind -> whether the clip has it. Several instruments: all must be audible; a
    BPM counts through its tempo band."""
    matches = {}
    for kind, value in asserts.items():
        if kind == "instrument":
            matches[kind] = all(family in heard.families for family in value)
        elif kind == "tempo_bpm":
            if "tempo" not in asserts:
                matches["tempo"] = tempo_word(value) == heard.tempo_word
        else:
            matches[kind] = value == heard.kind_value(kind)
    return matches


def asserted_ta(matches: dict[str, bool]) -> float:
    """The raters' latent TA for a prompt asserting matches' kinds: 1 when none is heard, 4.7
    when all are, the share of TA_WEIGHTS between (a prompt naming everything: latent_ta)."""
    if not matches:
        return 1.0
    total = sum(TA_WEIGHTS[k] for k in matches)
    return float(np.clip(1.0 + 3.7 * sum(TA_WEIGHTS[k] for k, ok in matches.items() if ok) / total, 1.0, 5.0))


def latent_ta(matches: dict[str, bool]) -> float:
    """1 when nothing asked for is heard, 4.7 when everything is (as deramos-synth's)."""
    return float(np.clip(1.0 + 3.7 * sum(TA_WEIGHTS[k] for k, ok in matches.items() if ok), 1.0, 5.0))


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def prompt_for(attributes: RealAttributes, rng: np.random.Generator | None = None) -> str:
    """A prompt naming all five kinds; without `rng`, a pure function of the attributes."""
    if rng is None:
        rng = np.random.default_rng(zlib.crc32(repr(attributes).encode()))
    instrument = str(rng.choice(FAMILIES[attributes.instrument][0]))
    words = {
        "ensemble": str(rng.choice(ENSEMBLES[attributes.ensemble][0])).format(i=instrument),
        "tempo": str(rng.choice(VOCABULARY["tempo"][attributes.tempo_word])),
        "mood": str(rng.choice(VOCABULARY["mood"][attributes.mode])),
        "dynamics": str(rng.choice(VOCABULARY["dynamics"][attributes.dynamics])),
    }
    words["a_tempo"], words["a_mood"] = _article(words["tempo"]), _article(words["mood"])
    words.update({name[:1].upper() + name[1:]: value[:1].upper() + value[1:] for name, value in list(words.items())})
    text = str(rng.choice(TEMPLATES)).format(**words)
    return text[:1].upper() + text[1:]


def counterfactual(asked: RealAttributes, heard: RealAttributes, rated_ta: float,
                   rng: np.random.Generator, own: dict | None = None) -> tuple[str, float]:
    """Another template prompt, one or two kinds changed, and the TA the raters would give it:
    the rated TA moved by the change in latent TA from the assertion `own` of the prompt the clip
    was rated on (default: the template prompt of `asked`)."""
    own = assertion_of(asked) if own is None else own
    other = asked
    for kind in rng.choice(TEMPLATE_KINDS, size=int(rng.integers(1, 3)), replace=False):
        other = change_attribute(other, str(kind), rng)
    shift = asserted_ta(assertion_matches(assertion_of(other), heard)) - asserted_ta(assertion_matches(own, heard))
    return prompt_for(other, rng), round(float(np.clip(rated_ta + shift, 1.0, 5.0)), 3)
