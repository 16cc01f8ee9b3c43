"""What a real-music clip sounds like, as prompt-level attributes, and prompts describing it.

The kinds differ from deramos-synth's (real scores have no genre to choose): the lead
instrument family (the General-MIDI programs every part is given), the ensemble size (how
many of the score's parts play), tempo, mood (the mode of the score's key) and dynamics.
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
}
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
PROMPT_KINDS = ("instrument", "ensemble", "tempo", "mood", "dynamics")
# How much each kind matters to the simulated raters' TA; sums to 1.
TA_WEIGHTS = {"instrument": 0.30, "ensemble": 0.15, "tempo": 0.20, "mood": 0.20, "dynamics": 0.15}

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

    @property
    def tempo_word(self) -> str:
        return tempo_word(self.tempo_bpm)

    def kind_value(self, kind: str) -> str:
        return {"instrument": self.instrument, "ensemble": self.ensemble, "tempo": self.tempo_word,
                "mood": self.mode, "dynamics": self.dynamics}[kind]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RealAttributes":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def random_attributes(rng: np.random.Generator) -> RealAttributes:
    low, high = TEMPO_BANDS[str(rng.choice(list(TEMPO_BANDS)))]
    return RealAttributes(instrument=str(rng.choice(list(FAMILIES))), ensemble=str(rng.choice(list(ENSEMBLES))),
                          tempo_bpm=round(float(rng.uniform(low, high)), 1), mode=str(rng.choice(MODES)),
                          dynamics=str(rng.choice(DYNAMICS)))


def change_attribute(attributes: RealAttributes, kind: str, rng: np.random.Generator) -> RealAttributes:
    """A copy whose `kind` audibly differs."""
    def other(values, current):
        return str(rng.choice([v for v in values if v != current]))

    if kind == "tempo":
        low, high = TEMPO_BANDS[other(list(TEMPO_BANDS), attributes.tempo_word)]
        return replace(attributes, tempo_bpm=round(float(rng.uniform(low, high)), 1))
    choices = {"instrument": list(FAMILIES), "ensemble": list(ENSEMBLES), "mood": MODES, "dynamics": DYNAMICS}
    if kind not in choices:
        raise ValueError(f"unknown attribute kind {kind!r}")
    field_name = "mode" if kind == "mood" else kind
    return replace(attributes, **{field_name: other(choices[kind], attributes.kind_value(kind))})


def mismatched(attributes: RealAttributes, rng: np.random.Generator,
               kinds: tuple[str, ...] | None = None) -> RealAttributes:
    """A copy with `kinds` (default: 2-3 kinds drawn at random) audibly different: what a
    wrong prompt for the clip describes."""
    if kinds is None:
        kinds = tuple(str(k) for k in rng.choice(PROMPT_KINDS, size=int(rng.integers(2, 4)), replace=False))
    for kind in kinds:
        attributes = change_attribute(attributes, kind, rng)
    return attributes


def attribute_matches(prompt: RealAttributes, heard: RealAttributes) -> dict[str, bool]:
    return {kind: prompt.kind_value(kind) == heard.kind_value(kind) for kind in PROMPT_KINDS}


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
                   rng: np.random.Generator) -> tuple[str, float]:
    """Another prompt, one or two kinds changed, and the TA the raters would give it."""
    other = asked
    for kind in rng.choice(PROMPT_KINDS, size=int(rng.integers(1, 3)), replace=False):
        other = change_attribute(other, str(kind), rng)
    shift = latent_ta(attribute_matches(other, heard)) - latent_ta(attribute_matches(asked, heard))
    return prompt_for(other, rng), round(float(np.clip(rated_ta + shift, 1.0, 5.0)), 3)
