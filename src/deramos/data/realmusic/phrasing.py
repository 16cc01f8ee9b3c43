"""Prompts as people write them: a few of a clip's kinds, in their own words and shapes.

`prompt_for` names all five template kinds in five sentence shapes, so a TA branch trained on it
alone has never seen "sax, 92 bpm" or a prompt about something that is not music. Here:

- `describe(attributes, rng)`: a short prompt naming 1-4 kinds truthfully, and its assertion;
- `wrong_description(attributes, rng)`: the same with at least one asserted value wrong;
- `counterfactual_pair(asked, heard, rated_ta, rng)`: another partial prompt for a rated clip
  and the TA the raters would give it;
- `unrelated_prompt(rng)`: speech, sounds, silence, everyday text or instruments no corpus has
  (target TA 1.0).

All are pure functions of their arguments and the rng. The vocabulary is in the tables below,
one per kind, and no phrase stands in two tables (tests parse prompts back with them).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..synth.music import TEMPO_BANDS
from .attributes import (
    DRUMS,
    DYNAMICS,
    ENSEMBLES,
    FAMILIES,
    GENRES,
    MODES,
    RealAttributes,
    asserted_ta,
    assertion_matches,
    assertion_of,
    check_assertion,
)

# --------------------------------------------------------------------------- vocabulary

INSTRUMENT_WORDS = {
    "piano": ("piano", "grand piano", "upright piano", "acoustic piano", "keys", "ivories", "concert grand",
              "honky-tonk piano", "felt piano"),
    "harpsichord": ("harpsichord", "clavecin", "cembalo", "spinet", "virginal"),
    "organ": ("organ", "pipe organ", "church organ", "hammond", "hammond organ", "b3 organ", "tonewheel organ",
              "cathedral organ"),
    "guitar": ("guitar", "acoustic guitar", "nylon-string guitar", "steel-string guitar", "fingerpicked guitar",
               "strummed guitar", "six-string", "spanish guitar"),
    "strings": ("strings", "string section", "violin", "violins", "cello", "cellos", "viola", "fiddle",
                "bowed strings", "violins and cellos"),
    "brass": ("brass", "horns", "trumpet", "trumpets", "trombone", "french horn", "brass section", "tuba",
              "flugelhorn", "cornet", "horn section"),
    "woodwinds": ("woodwinds", "woodwind section", "clarinet", "oboe", "bassoon", "reeds", "english horn",
                  "clarinets and oboes"),
    "flute": ("flute", "flutes", "recorder", "piccolo", "pan flute", "tin whistle", "penny whistle", "fife"),
    "choir": ("choir", "voices", "chorus", "vocal ensemble", "choral voices", "singers", "vocal harmonies",
              "aahs"),
    "synth": ("synth", "synths", "synthesizer", "synth lead", "lead synth", "analog synth", "pads", "synth pads",
              "moog", "saw lead", "supersaw", "wavetable synth", "polysynth"),
    "electric_piano": ("electric piano", "rhodes", "fender rhodes", "wurlitzer", "wurli", "e-piano",
                       "electric keys", "vintage keys"),
    "electric_guitar": ("electric guitar", "axe", "distorted guitar", "overdriven guitar", "guitar riffs",
                        "shred guitar", "power chords", "fuzz guitar", "crunchy guitar", "lead guitar",
                        "telecaster", "jangly guitar"),
    "saxophone": ("sax", "saxophone", "tenor sax", "alto sax", "soprano sax", "baritone sax", "saxes",
                  "tenor saxophone"),
    "mallets": ("vibraphone", "marimba", "xylophone", "glockenspiel", "mallets", "mallet percussion"),
    "bass": ("bass", "bass guitar", "bassline", "synth bass", "808 bass", "electric bass", "slap bass",
             "sub bass", "low end", "fretless bass", "walking bass"),
}
ENSEMBLE_WORDS = {
    "solo": ("solo", "unaccompanied", "lone", "single", "solitary"),
    "small": ("duo", "trio", "duet", "small group", "small combo", "small-ensemble", "chamber-sized", "sparse"),
    "full": ("full ensemble", "large ensemble", "big ensemble", "layered", "densely layered", "many-voiced",
             "full arrangement", "tutti"),
}
TEMPO_WORDS = {
    "slow": ("slow", "unhurried", "leisurely", "laid-back", "lazy", "slow-paced", "adagio", "largo", "crawling",
             "sluggish", "languid"),
    "moderate": ("moderate", "mid-tempo", "midtempo", "medium-tempo", "walking-pace", "moderato", "andante",
                 "medium-paced", "moderately paced"),
    "fast": ("fast", "quick", "brisk", "up-tempo", "uptempo", "rapid", "speedy", "allegro", "presto", "racing",
             "fast-paced", "breakneck"),
}
# How a numeric tempo is written ({n}: whole BPM).
BPM_FORMATS = ("{n} bpm", "{n}bpm", "{n} BPM", "at {n} bpm", "at {n} BPM", "tempo {n}", "tempo: {n}",
               "~{n} bpm", "around {n} bpm", "{n} beats per minute", "bpm {n}", "bpm: {n}")
MOOD_WORDS = {
    "major": ("happy", "uplifting", "bright", "cheerful", "joyful", "sunny", "hopeful", "feel-good", "playful",
              "major-key", "triumphant", "optimistic", "carefree"),
    "minor": ("sad", "melancholic", "melancholy", "dark", "moody", "somber", "sombre", "gloomy", "wistful",
              "minor-key", "brooding", "mournful", "bittersweet", "haunting", "tragic", "heartbroken"),
}
DYNAMICS_WORDS = {
    "soft": ("soft", "quiet", "gentle", "hushed", "delicate", "subdued", "pianissimo", "low-volume", "tender",
             "muted", "understated", "faint"),
    "loud": ("loud", "powerful", "forceful", "booming", "fortissimo", "punchy", "blaring", "thunderous",
             "full-volume", "cranked-up", "intense"),
}
# Subgenres people name, each under the canonical genre the raters would hear it as.
GENRE_WORDS = {
    "classical": ("classical", "baroque", "romantic-era", "classical-era", "neoclassical", "concert music",
                  "art music", "mozart-style", "bach-like"),
    "pop": ("pop", "pop song", "indie pop", "k-pop", "j-pop", "dance-pop", "bubblegum pop", "radio pop",
            "power pop", "chart pop"),
    "rock": ("rock", "hard rock", "indie rock", "classic rock", "punk", "punk rock", "alt-rock",
             "alternative rock", "grunge", "garage rock", "arena rock", "rock and roll"),
    "electronic": ("electronic", "edm", "techno", "house", "deep house", "trance", "dubstep", "electro",
                   "synthwave", "idm", "electronica", "club music", "rave"),
    "jazz": ("jazz", "jazzy", "bebop", "swing", "smooth jazz", "cool jazz", "jazz fusion", "hard bop",
             "bossa nova", "lounge jazz", "modal jazz"),
    "folk": ("folk", "folky", "americana", "bluegrass", "celtic folk", "singer-songwriter", "indie folk",
             "traditional folk", "folk ballad"),
    "chiptune": ("chiptune", "8-bit", "16-bit", "video game music", "nes-style", "chip music", "gameboy music",
                 "bitpop", "retro arcade"),
    "ambient": ("ambient", "atmospheric", "drone", "new age", "ambient soundscape", "space music",
                "meditation music", "ambient wash"),
}
DRUMS_WORDS = {
    "drums": ("drums", "drum kit", "live drums", "drum machine", "a backbeat", "percussion", "a drum groove",
              "breakbeats", "programmed beats", "kick and snare"),
    "no drums": ("no drums", "without drums", "drumless", "no percussion", "beatless", "without percussion",
                 "no beat"),
}
SYNONYMS = {"instrument": INSTRUMENT_WORDS, "ensemble": ENSEMBLE_WORDS, "tempo": TEMPO_WORDS, "mood": MOOD_WORDS,
            "dynamics": DYNAMICS_WORDS, "genre": GENRE_WORDS, "drums": DRUMS_WORDS}
# Key-value prompts ("mood: sad; tempo: 92 bpm"): labels that are in no synonym table.
KIND_LABELS = {"instrument": ("instruments", "lead", "instrument"), "ensemble": ("lineup", "size", "players"),
               "tempo": ("tempo", "speed", "pace"), "mood": ("mood", "feel", "feeling"),
               "dynamics": ("volume", "dynamics", "level"), "genre": ("genre", "style"), "drums": ("rhythm",)}
FILLER_NOUNS = ("track", "tune", "piece", "cue", "loop", "jam", "instrumental")
SCENES = ("a vlog", "a short film", "studying", "a presentation", "a cafe", "a montage", "an intro",
          "a trailer", "my podcast", "a product demo", "a slideshow", "the end credits")
REQUESTS = ("give me", "i need", "looking for", "i want", "make me", "generate", "need", "write me", "compose",
            "could i get")
INSTRUMENT_JOINS = (" and ", " & ", " with ", " over ", ", ", " plus ")

# --------------------------------------------------------------------------- design weights

# How many kinds a prompt asserts: people write short prompts.
KIND_COUNT_WEIGHTS = {1: 0.30, 2: 0.35, 3: 0.25, 4: 0.10}
# Which kinds: the instrument most often, ensemble and drums least.
KIND_WEIGHTS = {"instrument": 3.0, "mood": 1.6, "tempo": 1.5, "genre": 1.4, "dynamics": 1.0, "ensemble": 0.8,
                "drums": 0.8}
NUMERIC_TEMPO_SHARE = 0.4   # tempo given as a BPM rather than a word
BPM_JITTER = 4              # a numeric tempo is the clip's within this many BPM (clipped to its band)
TWO_FAMILY_SHARE = 0.3      # an instrument assertion names two audible families (when there are two)


class Prompt(NamedTuple):
    text: str
    assertion: dict
    shape: str


# --------------------------------------------------------------------------- what is asserted

def _eligible(attributes: RealAttributes) -> list[str]:
    """Kinds a person would name for this clip: drums only for an arrangement (saying a score
    has no drums is true but nobody asks for it), or where drums play."""
    kinds = [k for k in KIND_WEIGHTS if k != "drums"]
    if attributes.genre != "classical" or attributes.drums == "drums":
        kinds.append("drums")
    return kinds


def _pick_kinds(attributes: RealAttributes, rng) -> list[str]:
    counts = list(KIND_COUNT_WEIGHTS)
    count = int(rng.choice(counts, p=np.array(list(KIND_COUNT_WEIGHTS.values())) / sum(KIND_COUNT_WEIGHTS.values())))
    kinds = _eligible(attributes)
    weights = np.array([KIND_WEIGHTS[k] for k in kinds])
    return [str(k) for k in rng.choice(kinds, size=count, replace=False, p=weights / weights.sum())]


def _band(word: str) -> tuple[int, int]:
    low, high = TEMPO_BANDS[word]
    return math.ceil(low), math.floor(high)


def _bpm_near(bpm: float, word: str, rng) -> float:
    low, high = _band(word)
    return float(np.clip(round(bpm) + int(rng.integers(-BPM_JITTER, BPM_JITTER + 1)), low, high))


def _true_claim(kind: str, attributes: RealAttributes, rng) -> tuple[str, object]:
    """(assertion key, value) saying what the clip has."""
    if kind == "instrument":
        families = list(attributes.families)
        count = 2 if len(families) > 1 and rng.random() < TWO_FAMILY_SHARE else 1
        return kind, tuple(str(f) for f in rng.choice(families, size=count, replace=False))
    if kind == "tempo" and rng.random() < NUMERIC_TEMPO_SHARE:
        return "tempo_bpm", _bpm_near(attributes.tempo_bpm, attributes.tempo_word, rng)
    return kind, attributes.kind_value(kind)


def _wrong_claim(key: str, value, attributes: RealAttributes, rng) -> tuple[str, object]:
    """(key, value) replacing a claim with one the clip does not have."""
    if key == "instrument":
        absent = [f for f in FAMILIES if f not in attributes.families]
        families = list(value)
        families[int(rng.integers(len(families)))] = str(rng.choice(absent))
        return key, tuple(families)
    if key in ("tempo", "tempo_bpm"):
        word = str(rng.choice([w for w in TEMPO_BANDS if w != attributes.tempo_word]))
        return key, (float(rng.integers(*_band(word), endpoint=True)) if key == "tempo_bpm" else word)
    values = {"ensemble": tuple(ENSEMBLES), "mood": MODES, "dynamics": DYNAMICS, "genre": GENRES, "drums": DRUMS}
    return key, str(rng.choice([v for v in values[key] if v != value]))


def _claims(attributes: RealAttributes, rng, kinds, wrong: bool) -> dict:
    kinds = list(kinds) if kinds is not None else _pick_kinds(attributes, rng)
    asserts = dict(_true_claim(k, attributes, rng) for k in kinds)
    if wrong:   # one to all of the claims wrong, one most often
        keys = list(asserts)
        for key in rng.choice(keys, size=int(rng.integers(1, len(keys) + 1)) if rng.random() < 0.3 else 1,
                              replace=False):
            asserts[str(key)] = _wrong_claim(str(key), asserts[str(key)], attributes, rng)[1]
    return asserts


# --------------------------------------------------------------------------- surface

class Parts(NamedTuple):
    adjectives: list[str]       # ensemble, dynamics, mood, tempo and genre words, said before a noun
    instruments: list[str]
    tails: list[str]            # what follows a noun: "with drums", "no drums", "at 92 bpm"
    labelled: list[tuple[str, str]]   # (label, words) for key-value shapes

    @property
    def tags(self) -> list[str]:
        return [words for _, words in self.labelled]


def _pick(options, rng) -> str:
    return str(options[int(rng.integers(len(options)))])


def _words_for(key: str, value, rng) -> list[str]:
    """The words saying one claim (one entry per family for instruments)."""
    if key == "instrument":
        return [_pick(INSTRUMENT_WORDS[f], rng) for f in value]
    if key == "tempo_bpm":
        return [_pick(BPM_FORMATS, rng).format(n=int(value))]
    return [_pick(SYNONYMS[key][value], rng)]


def _parts(asserts: dict, rng) -> Parts:
    adjectives, instruments, tails, labelled = [], [], [], []
    for key in [str(k) for k in rng.permutation(list(asserts))]:   # free word order
        words = _words_for(key, asserts[key], rng)
        kind = "tempo" if key == "tempo_bpm" else key
        labelled.append((_pick(KIND_LABELS[kind], rng), ", ".join(words)))
        if key == "instrument":
            instruments += words
        elif key == "drums":
            tails.append(("with " + words[0]) if asserts[key] == "drums" else words[0])
        elif key == "tempo_bpm":
            said_alone = words[0].startswith(("at ", "around ", "~", "tempo", "bpm"))
            tails.append(words[0] if said_alone else "at " + words[0])
        else:
            adjectives.append(words[0])
    return Parts(adjectives, instruments, tails, labelled)


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou8" else "a"


def _head(parts: Parts, rng, filler: float = 0.4) -> str:
    """The noun: the instruments (sometimes followed by "track"), or a filler noun."""
    if not parts.instruments:
        return _pick(FILLER_NOUNS, rng)
    head = _pick(INSTRUMENT_JOINS, rng).join(parts.instruments)
    return head + " " + _pick(FILLER_NOUNS, rng) if rng.random() < filler else head


def _noun_phrase(parts: Parts, rng, article: bool = False) -> str:
    text = " ".join([*parts.adjectives, _head(parts, rng), *parts.tails])
    return f"{_article(text)} {text}" if article else text


def _and_list(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _adjective_list(parts: Parts) -> list[str]:
    return [_and_list(parts.adjectives)] if parts.adjectives else []


def _on_head(parts: Parts, rng) -> list[str]:
    return ["on " + _head(parts, rng, 0.0)] if parts.instruments else []


def _featuring(parts: Parts) -> list[str]:
    return ["featuring " + _and_list(parts.instruments)] if parts.instruments else []


def _something(parts: Parts, rng) -> str:
    return " ".join(["something", *(_adjective_list(parts) or ["nice"]), *_on_head(parts, rng), *parts.tails])



def _dash(parts: Parts, rng) -> str:
    rest = parts.adjectives + parts.tails
    return f"{_head(parts, rng)} - {', '.join(rest)}" if rest else _head(parts, rng)


# Each shape: Parts, rng -> text. Names say what they look like.
SHAPES = {
    "tags_comma": lambda p, rng: ", ".join(p.tags),
    "tags_slash": lambda p, rng: " / ".join(p.tags),
    "tags_pipe": lambda p, rng: " | ".join(p.tags),
    "tags_plus": lambda p, rng: " + ".join(p.tags),
    "key_value": lambda p, rng: _pick(("; ", ", ", " | "), rng).join(f"{k}: {v}" for k, v in p.labelled),
    "noun_phrase": lambda p, rng: _noun_phrase(p, rng),
    "sentence": lambda p, rng: _noun_phrase(p, rng, article=True) + ".",
    "request": lambda p, rng: f"{_pick(REQUESTS, rng)} {_noun_phrase(p, rng, article=True)}",
    "question": lambda p, rng: f"can you make {_noun_phrase(p, rng, article=True)}?",
    "something": lambda p, rng: _something(p, rng),
    "featuring": lambda p, rng: " ".join([*p.adjectives, _pick(FILLER_NOUNS, rng), *_featuring(p), *p.tails]),
    "trailing": lambda p, rng: ", ".join([_head(p, rng), *_adjective_list(p), *p.tails]),
    "dash": lambda p, rng: _dash(p, rng),
    "for_scene": lambda p, rng: f"{_noun_phrase(p, rng)} for {_pick(SCENES, rng)}",
    "make_it": lambda p, rng: "make it " + ", ".join([*_adjective_list(p), *_on_head(p, rng), *p.tails]),
    "just": lambda p, rng: "just " + _noun_phrase(p, rng),
}


def _finish(text: str, rng) -> str:
    """Random casing and end punctuation, as people type."""
    text = " ".join(text.split())
    draw = rng.random()
    if draw < 0.35:
        text = text[:1].upper() + text[1:]
    elif draw < 0.42:
        text = text.title()
    elif draw < 0.45:
        text = text.upper()
    if not text.endswith(("?", ".", "-")):
        text += _pick(("", "", "", ".", "!", "..."), rng)
    return text


def compose(attributes: RealAttributes, rng, kinds=None, wrong: bool = False) -> Prompt:
    """A people-style prompt about `attributes` naming `kinds` (default: 1-4 drawn), each value
    true, or (wrong) at least one false; with its assertion and the shape's name."""
    asserts = _claims(attributes, rng, kinds, wrong)
    shape = _pick(list(SHAPES), rng)
    return Prompt(_finish(SHAPES[shape](_parts(asserts, rng), rng), rng), check_assertion(asserts), shape)


def describe(attributes: RealAttributes, rng, kinds=None) -> tuple[str, dict]:
    """(text, assertion): a short prompt saying truthfully some of what the clip has."""
    prompt = compose(attributes, rng, kinds)
    return prompt.text, prompt.assertion


def wrong_description(attributes: RealAttributes, rng, kinds=None) -> tuple[str, dict]:
    """(text, assertion): a short prompt of which at least one asserted value the clip lacks."""
    prompt = compose(attributes, rng, kinds, wrong=True)
    return prompt.text, prompt.assertion


# Which prompt a counterfactual pair gets: true of the heard clip, partly false, or true of
# what was asked (false where the system missed it).
COUNTERFACTUAL_SOURCES = {"heard": 0.35, "wrong": 0.45, "asked": 0.20}


def counterfactual_pair(asked: RealAttributes, heard: RealAttributes, rated_ta: float, rng,
                        own: dict | None = None) -> tuple[str, float]:
    """(text, ta): another partial prompt for a rated clip and the TA the raters would give it.

    `own` is the assertion of the prompt the clip was rated against (default: what prompt_for(asked)
    asserts, the five template kinds); the rated TA moves by the difference between the raters'
    latent TA for the new assertion and for `own`, both judged against `heard`."""
    own = assertion_of(asked) if own is None else own
    source = str(rng.choice(list(COUNTERFACTUAL_SOURCES), p=list(COUNTERFACTUAL_SOURCES.values())))
    text, new = (wrong_description(heard, rng) if source == "wrong"
                 else describe(asked if source == "asked" else heard, rng))
    shift = asserted_ta(assertion_matches(new, heard)) - asserted_ta(assertion_matches(own, heard))
    return text, round(float(np.clip(rated_ta + shift, 1.0, 5.0)), 3)


# --------------------------------------------------------------------------- not music

# Sounds of the world: a source and what it does (no word here is in a table above).
ENVIRONMENT = {
    "rain": ("pattering against the glass", "dripping from a gutter", "falling on a tin roof"),
    "a dog": ("barking", "growling", "panting", "whining at the door"),
    "traffic": ("rushing past", "inching through an intersection", "idling at a red light"),
    "the wind": ("howling", "rattling the shutters", "blowing through pine trees"),
    "waves": ("crashing on rocks", "lapping at the shore", "breaking on a beach"),
    "a crowd": ("cheering", "murmuring", "clapping", "chanting a name"),
    "birds": ("chirping", "squawking", "flapping their wings"),
    "a baby": ("crying", "giggling", "babbling"),
    "a cat": ("meowing", "purring", "hissing"),
    "thunder": ("rumbling", "cracking overhead", "rolling across a valley"),
    "a river": ("flowing over stones", "gurgling", "rushing after a storm"),
    "a fire": ("crackling", "roaring in a fireplace", "popping and hissing"),
    "a train": ("passing a crossing", "braking at a station", "rattling over points"),
    "an airplane": ("taking off", "flying overhead", "landing on a runway"),
    "frogs": ("croaking", "calling near a pond"),
    "a clock": ("ticking", "chiming the hour"),
    "a lawnmower": ("starting up", "cutting grass"),
    "people": ("chatting", "laughing", "walking on gravel"),
    "a car": ("starting", "skidding", "driving over a wet road"),
    "a fan": ("whirring", "rattling"),
}
PLACES = ("", " in a park", " at night", " outside", " in the distance", " down the street", " in a parking lot",
          " in the kitchen", " in the morning", " far away", " next door", " on a farm", " in a city square",
          " behind a wall", " in a tunnel")
SPEAKERS = ("a man", "a woman", "a child", "two people", "a news anchor", "a podcast host", "an old man",
            "a teacher", "a tour guide", "a sports commentator", "a flight attendant", "a customer",
            "a radio host", "a politician")
SPEECH_ACTS = ("talking about", "reading a list of", "complaining about", "explaining", "asking about",
               "giving a lecture on", "arguing about", "laughing about")
TOPICS = ("the weather", "tax returns", "football scores", "a recipe for soup", "train delays",
          "the stock market", "gardening tips", "a lost wallet", "the history of rome", "car insurance",
          "a new phone", "holiday plans", "the election", "parking fines", "a broken boiler", "school lunches",
          "the price of eggs", "a job interview", "a hiking trail", "the traffic report")
EFFECTS = ("a door slamming", "glass shattering", "a car horn", "footsteps on gravel", "a phone ringing",
           "an alarm clock beeping", "a microwave beeping", "paper tearing", "a zipper", "a balloon popping",
           "an explosion", "a laser zap", "a camera shutter", "a printer printing", "typing on a laptop",
           "a coin dropping", "a drawer closing", "water boiling", "a kettle whistling", "a vacuum cleaner",
           "a helicopter overhead", "a sword clash", "a punch", "a squeaky hinge", "an elevator ding")
EFFECT_FORMS = ("{e}", "{e} sound effect", "sfx: {e}", "the sound of {e}", "foley of {e}", "{e}, close up",
                "{e} recorded on a phone", "{e} sfx")
SILENCE = ("silence", "complete silence", "total silence", "dead air", "room tone", "an empty room",
           "nothing at all", "the hum of a fridge", "an empty hallway", "tape hiss", "a blank recording",
           "white noise", "static")
DURATIONS = ("", " for ten seconds", " for a minute", " for thirty seconds", ", nothing else", " only")
# Instruments no corpus family covers: the raters hear none of them.
ABSENT_INSTRUMENTS = ("bagpipes", "sitar", "didgeridoo", "tabla", "banjo", "accordion", "theremin", "kazoo",
                      "ukulele", "harp", "koto", "shamisen", "erhu", "gamelan", "hurdy-gurdy", "mbira", "kalimba",
                      "oud", "balalaika", "mandolin", "steelpan", "harmonica", "duduk", "shakuhachi",
                      "musical saw", "jaw harp", "bodhran", "taiko")
ABSENT_FORMS = ("{i}", "{i} at {event}", "{a} {i} busker at {event}", "{i} played badly", "tuning {a} {i}",
                "{i} lesson for beginners", "someone practising {i}", "{i} in {event}")
EVENTS = ("a wedding", "a street parade", "a festival", "a village square", "a market", "a train station",
          "a school hall", "a harbour", "a county fair")
TASKS = ("fix a leaking tap", "bake sourdough bread", "change a tyre", "file my taxes", "water the plants",
         "renew a passport", "clean an oven", "call the dentist", "return a parcel", "learn spanish",
         "book a table for two", "pay the electricity bill", "paint a fence", "walk the dog", "buy milk and eggs",
         "cancel a subscription", "reset my router", "plan a birthday party")
CITIES = ("tokyo", "lisbon", "nairobi", "oslo", "lima", "toronto", "cairo", "hanoi", "dublin", "perth")
EVERYDAY_FORMS = ("how to {t}", "remind me to {t}", "best way to {t}", "{t} tomorrow", "weather in {c} this weekend",
                  "cheap flights to {c}", "what time is it in {c}", "I forgot to {t}", "{t} before friday",
                  "things to do in {c}")

ASIDES = ("", "", "hey, ", "ok so ", "please ", "question: ", "note to self: ", "search: ")


def _environment(rng) -> str:
    source = _pick(list(ENVIRONMENT), rng)
    one = f"{source} {_pick(ENVIRONMENT[source], rng)}{_pick(PLACES, rng)}"
    if rng.random() < 0.25:   # two sounds at once
        other = _pick([s for s in ENVIRONMENT if s != source], rng)
        one += f" and {other} {_pick(ENVIRONMENT[other], rng)}"
    return one


def _absent(rng) -> str:
    instrument = _pick(ABSENT_INSTRUMENTS, rng)
    return _pick(ABSENT_FORMS, rng).format(i=instrument, a=_article(instrument), event=_pick(EVENTS, rng))


UNRELATED = {
    "environment": _environment,
    "speech": lambda rng: f"{_pick(SPEAKERS, rng)} {_pick(SPEECH_ACTS, rng)} {_pick(TOPICS, rng)}{_pick(PLACES, rng)}",
    "effect": lambda rng: _pick(EFFECT_FORMS, rng).format(e=_pick(EFFECTS, rng) + _pick(PLACES, rng)),
    "silence": lambda rng: _pick(SILENCE, rng) + _pick(PLACES, rng) + _pick(DURATIONS, rng),
    "absent_instrument": _absent,
    "everyday": lambda rng: _pick(ASIDES, rng) + _pick(EVERYDAY_FORMS, rng).format(t=_pick(TASKS, rng),
                                                                                   c=_pick(CITIES, rng)),
}


def unrelated_prompt(rng) -> str:
    """A prompt about something that is not in any clip (target TA 1.0): speech, sounds,
    silence, everyday text or an instrument no corpus has."""
    return _finish(UNRELATED[_pick(list(UNRELATED), rng)](rng), rng)
