"""A MOS corpus of real music in the MusicEval layout: scores rendered, recordings excerpted.

Each simulated system (deramos-synth's archetypes: its degradation habits and how often it
gets a prompt attribute wrong) "answers" prompts with real music:
- a score from music21's corpus whose key has the mode it plays, with as many parts as its
  ensemble, every part given a program of its instrument family, at its tempo and loudness,
  rendered by fluidsynth through a General-MIDI soundfont;
- or a folk tune from music21's corpus arranged in a style (pop, rock, electronic, jazz, folk,
  chiptune: melody, chords, bass, drums; arrange.py) and rendered the same way;
- or an excerpt of a recording from a Debian game-soundtrack package, whose attributes come
  from musicnn's tags (the prompt is then what the system gets wrong, not the audio).
Then deramos-synth's degradations, simulated raters and counterfactual prompts, as there.
Optional one-family systems (OneFamilyProfile) degrade every clip with one post-render family
alone at a uniform severity: the archetypes mix families and leave some (reverb, wobble) rare,
so a model would not learn what each one alone costs.

The training and held-out sets draw on disjoint sources (composers, tune collections, groove
variants, soundfont, packages): SOURCES says which. Every style is in both sets but with
disjoint variants (train 0 and 2, held-out 1): a held-out style the model never heard would
test whether the text encoder alone knows "jazz", not whether TA follows the audio's genre;
unseen grooves, tunes and soundfont test that it generalises within a genre.
Layout as deramos-synth writes it, plus `sources.json` (licences).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from ..synth.corpus import (
    ARCHETYPES,
    RATERS_PER_CLIP,
    WAV_PREFIX,
    Rater,
    _draw_degradations,
    _split_sizes,
    _votes,
    _write_tables,
    latent_mi,
)
from ..synth.degrade import EFFECTS, apply_degradations
from . import phrasing
from .arrange import (
    STYLES,
    Tune,
    arrange,
    heard_arrangement,
    jittered,
    random_arrangement_attributes,
    tune_pool,
    write_midi,
)
from .attributes import (
    ENSEMBLES,
    FAMILIES,
    PEAK,
    PROMPT_KINDS,
    TEMPLATE_KINDS,
    VELOCITY,
    RealAttributes,
    asserted_ta,
    assertion_matches,
    assertion_of,
    change_attribute,
    counterfactual,
    prompt_for,
    random_attributes,
)
from .freeform import held_out_texts, normalised
from .render import (
    SOUNDFONTS,
    Arrangement,
    RenderError,
    arranged_score,
    find_soundfont,
    load_recording,
    normalise,
    render_midi,
    render_score,
    trim,
)

SAMPLE_RATE = 16000
COUNTERFACTUALS_PER_CLIP = 8
# The counterfactual prompts of a corpus with people's prompts: template ones teach which
# attribute is wrong, people's ones their words, one not-music prompt that TA falls to 1.
CF_MIX = {"template": 4, "people": 3, "unrelated": 1}
RECORDING_DIRS = {
    "wesnoth-1.16-music": "/usr/share/games/wesnoth/1.16/data/core/music",
    "hyperrogue-music": "/usr/share/hyperrogue/music",
    "drascula-music": "/usr/share/scummvm/drascula/audio",
    "supertux-data": "/usr/share/games/supertux2/music",
    "xmoto-data": "/usr/share/games/xmoto/Textures/Musics",
    "extremetuxracer-data": "/usr/share/games/etr/music",
    "warzone2100-music": "/usr/share/games/warzone2100/music",
    "lincity-ng-data": "/usr/share/games/lincity-ng/music",
    "neverball-common": "/usr/share/games/neverball/bgm",
}
# Packages whose music lies in sub-folders or is not Ogg Vorbis; the rest: "*.ogg".
RECORDING_GLOBS = {"supertux-data": "**/*.ogg", "warzone2100-music": "**/*.opus", "lincity-ng-data": "**/*.ogg"}
LICENCES = {
    "music21": "BSD-3-Clause (PyPI music21); the scores are public-domain works",
    "wesnoth-1.16-music": "GPL-2 (Debian package; /usr/share/doc/wesnoth-1.16-music/copyright)",
    "hyperrogue-music": "GPL-2+ (Debian package; /usr/share/doc/hyperrogue-music/copyright)",
    "drascula-music": "Drascula licence, BSD-like (Debian package; /usr/share/doc/drascula-music/copyright)",
    "supertux-data": "GPL-2+ for data/music/* (Debian package; /usr/share/doc/supertux-data/copyright)",
    "xmoto-data": "GPL-2+ (Debian package; /usr/share/doc/xmoto-data/copyright, Files: *)",
    "extremetuxracer-data": "GPL-2+ (Debian package; /usr/share/doc/extremetuxracer-data/copyright, Files: *)",
    "warzone2100-music": "GPL-2+ (Debian package; /usr/share/doc/warzone2100-music/copyright, Files: *)",
    "lincity-ng-data": "GPL-2+ (Debian package; /usr/share/doc/lincity-ng-data/copyright, Files: *)",
    "neverball-common": "GPL-2+ (Debian package; /usr/share/doc/neverball-common/copyright, Files: *)",
    "music21-tunes": "BSD-3-Clause (PyPI music21); the ABC tune collections are traditional tunes as transcribed there",
}
SOURCES = {
    "train": {"composers": ("bach", "monteverdi", "haydn", "mozart"), "soundfonts": ("FluidR3_GM.sf2",),
              "recordings": ("wesnoth-1.16-music", "supertux-data", "xmoto-data", "extremetuxracer-data"),
              "tunes": ("ryansMammoth", "oneills1850"), "variants": {s: (0, 2) for s in STYLES}},
    "heldout": {"composers": ("palestrina", "beethoven", "schumann_robert", "schumann_clara", "trecento"),
                "soundfonts": ("TimGM6mb.sf2",),
                "recordings": ("hyperrogue-music", "drascula-music", "warzone2100-music", "lincity-ng-data",
                               "neverball-common"),
                "tunes": ("essenFolksong", "nottingham-dataset", "airdsAirs", "miscFolk"),
                "variants": {s: (1,) for s in STYLES}},
}


@dataclass(frozen=True)
class Piece:
    path: str
    parts: int
    mode: str


def piece_pool(composers, count: int, rng, problems: list[str]) -> list[Piece]:
    """`count` parsable scores of these composers with their part count and mode."""
    from music21 import corpus

    paths = [p for c in composers for p in corpus.getComposer(c)]
    pool = []
    for index in rng.permutation(len(paths)):
        if len(pool) >= count:
            break
        try:
            score = corpus.parse(paths[index])
            parts = [p for p in score.parts if len(p.flatten().notes)]
            mode = score.measures(1, 16).analyze("key").mode
        except Exception as error:   # music21 raises many kinds on odd files
            problems.append(f"{paths[index]}: skipped ({type(error).__name__})")
            continue
        if parts and mode in ("major", "minor"):
            pool.append(Piece(str(paths[index]), len(parts), mode))
    return pool


def recording_files(packages) -> list[Path]:
    files = []
    for package in packages:
        folder = Path(RECORDING_DIRS[package])
        files += sorted(p for p in folder.glob(RECORDING_GLOBS.get(package, "*.ogg")) if p.stat().st_size > 200_000)
    return files


@dataclass(frozen=True)
class ClipPlan:
    index: int
    wav: str
    system: str
    prompt_id: str
    asked: RealAttributes | None     # None: a recording, prompted from what it is
    kind: str                        # "score" | "arrangement" | "recording"
    split: str
    asserts: dict | None = None      # what the shared prompt asserts (None: a recording's own)


def make_prompt(attributes: RealAttributes, people_share: float, rng) -> tuple[str, dict]:
    """(text, assertion): as people write prompts (phrasing.describe: 1-4 kinds, their words)
    with probability `people_share`, else the five-kind template (prompt_for). Never one of the
    free-form evaluation's prompts (see unused_by_evaluation)."""
    if rng.random() < people_share:
        return unused_by_evaluation(phrasing.describe(attributes, rng), lambda r: phrasing.describe(attributes, r))
    return prompt_for(attributes, rng), assertion_of(attributes)


def word_stream(rng, people_share: float, key: list[int]):
    """The rng a prompt's words are drawn from. With people's prompts a stream of its own, so the
    plan and the audio do not depend on them (corpora differing in --people-prompts hold the same
    clips); template-only corpora draw from `rng` as they always did (the same corpora as before)."""
    return rng if people_share <= 0.0 else np.random.default_rng(key)


def unused_by_evaluation(drawn, redraw):
    """`drawn` (a text, or a (text, ...) tuple), unless the free-form evaluation uses that text:
    then `redraw(rng)` with an rng seeded by the text, until it does not. The corpus's own rng
    is untouched, so the rest of the corpus (and its audio) stays as it was."""
    text = lambda d: d if isinstance(d, str) else d[0]   # noqa: E731
    avoid = held_out_texts()
    rng = np.random.default_rng(zlib.crc32(text(drawn).encode()))
    for _ in range(100):
        if normalised(text(drawn)) not in avoid:
            return drawn
        drawn = redraw(rng)
    raise RuntimeError(f"no prompt outside the free-form set after 100 draws (last {text(drawn)!r})")


def _arrangement_prompts(systems: int, clips_per_system: int, share: float, styles, seed: int,
                         people_share: float = 0.0):
    """The prompts arrangement clips answer (P5001...), shared by about three systems each like
    the score prompts; their own generator, so score-only corpora are as before."""
    if share <= 0.0:
        return []
    rng = np.random.default_rng([seed, 4])
    words = word_stream(rng, people_share, [seed, 6])
    count = max(clips_per_system, math.ceil(systems * clips_per_system * share / 3))
    prompts = []
    for number in range(1, count + 1):
        attrs = random_arrangement_attributes(rng, styles)
        prompts.append((f"P{5000 + number}", attrs, *make_prompt(attrs, people_share, words)))
    return prompts


@dataclass(frozen=True)
class OneFamilyProfile:
    """A simulated system whose every clip has one post-render degradation family alone, drawn
    uniformly, at a severity drawn uniformly from (0.05, 1]: what each family costs, unconfounded."""

    name: str = "one_family"
    mismatch_rate: float = 0.15
    families: tuple = tuple(sorted(EFFECTS))

    def draw(self, rng) -> dict[str, float]:
        return {str(rng.choice(self.families)): round(float(rng.uniform(0.05, 1.0)), 3)}


def draw_degradations(profile, rng) -> dict[str, float]:
    return profile.draw(rng) if isinstance(profile, OneFamilyProfile) else _draw_degradations(profile, rng)


def plan_corpus(systems: int, clips_per_system: int, recording_share: float, seed: int, held_out: bool,
                arrangement_share: float = 0.0, styles=tuple(STYLES), people_share: float = 0.0,
                one_family_systems: int = 0):
    """The archetype systems S001.. first, then `one_family_systems` OneFamilyProfile systems."""
    rng = np.random.default_rng([seed, 0])
    archetypes = [ARCHETYPES[i % len(ARCHETYPES)] for i in rng.permutation(systems)]
    systems += one_family_systems
    system_ids = [f"S{i:03d}" for i in range(1, systems + 1)]
    profiles = dict(zip(system_ids, archetypes + [OneFamilyProfile()] * one_family_systems))
    raters = [Rater(float(rng.normal(0, 0.3)), float(rng.normal(0, 0.3)), float(rng.uniform(0.35, 0.6))) for _ in range(8)]
    n_prompts = max(clips_per_system, math.ceil(systems * clips_per_system / 3))   # distinct within a system
    words = word_stream(rng, people_share, [seed, 8])
    prompts = []
    for number in range(1, n_prompts + 1):
        attrs = random_attributes(rng)
        prompts.append((f"P{number:03d}", attrs, *make_prompt(attrs, people_share, words)))
    arranged = _arrangement_prompts(systems, clips_per_system, arrangement_share, styles, seed, people_share)
    arranged_next = 0
    order, cursor, plans = rng.permutation(n_prompts), 0, []
    sizes = _split_sizes([clips_per_system] * systems)
    recording_number = 1
    for sid, size in zip(system_ids, sizes):
        labels = ["test"] * clips_per_system if held_out else [n for n, k in size.items() for _ in range(k)]
        labels = [labels[i] for i in rng.permutation(len(labels))]
        for k in range(clips_per_system):
            draw = rng.random()
            if draw < recording_share:
                pid, asked, kind, asserts = f"P{900 + recording_number:04d}", None, "recording", None
                recording_number += 1
            elif draw < recording_share + arrangement_share:
                pid, asked, _, asserts = arranged[arranged_next % len(arranged)]
                arranged_next, kind = arranged_next + 1, "arrangement"
            else:
                pid, asked, _, asserts = prompts[order[(cursor + k) % n_prompts]]
                kind = "score"
            if kind == "recording":
                asserts = None
            plans.append(ClipPlan(len(plans), f"{WAV_PREFIX}{sid}_{pid}.wav", sid, pid, asked, kind, labels[k],
                                  asserts))
        cursor += clips_per_system
    return profiles, plans, raters, prompts + arranged


# --------------------------------------------------------------------------- one clip


class Renderer:
    """What every clip of one corpus shares: pieces, recordings, soundfonts, the tagger."""

    def __init__(self, pool: list[Piece], recordings: list[Path], soundfonts: list[Path], seconds: float,
                 tunes: list[Tune] = (), variants: dict | None = None):
        self.pool, self.recordings, self.soundfonts, self.seconds = pool, recordings, soundfonts, seconds
        self.tunes, self.variants = list(tunes), dict(variants or {})   # style -> groove variants allowed
        self._tagger = None
        self._scores: dict[str, object] = {}

    def score_audio(self, heard: RealAttributes, jitter: float, rng) -> tuple[np.ndarray, dict]:
        low, high = ENSEMBLES[heard.ensemble][1]
        fits = [p for p in self.pool if p.mode == heard.mode and p.parts >= low] or \
               [p for p in self.pool if p.mode == heard.mode]
        if not fits:
            raise RenderError(f"no score in the pool of {len(self.pool)} is in {heard.mode} (draw more --pieces)")
        piece = fits[int(rng.integers(len(fits)))]
        count = int(rng.integers(min(low, piece.parts), min(high, piece.parts) + 1))
        parts = tuple(sorted({0, *rng.choice(piece.parts, size=count, replace=False).tolist()}))[:count]
        programs = tuple(int(p) for p in rng.choice(FAMILIES[heard.instrument][1], size=len(parts)))
        arrangement = Arrangement(parts, programs, heard.tempo_bpm, VELOCITY[heard.dynamics], 1, 24)
        soundfont = self.soundfonts[int(rng.integers(len(self.soundfonts)))]
        score = arranged_score(self._parse(piece.path), arrangement, jitter * 0.12, rng)
        audio = trim(render_score(score, soundfont, SAMPLE_RATE), self.seconds, SAMPLE_RATE)
        if len(audio) < 4 * SAMPLE_RATE:
            raise RenderError(f"{Path(piece.path).name}: only {len(audio) / SAMPLE_RATE:.1f} s rendered")
        audio = normalise(audio, float(rng.uniform(*PEAK[heard.dynamics])))
        return audio, {"piece": piece.path, "parts": list(parts), "programs": list(programs),
                       "soundfont": soundfont.name}

    def arrangement_audio(self, heard: RealAttributes, jitter: float, rng) -> tuple[np.ndarray, RealAttributes, dict]:
        """A tune of the heard mode arranged as `heard` says; heard's mode becomes the tune's."""
        fits = [t for t in self.tunes if t.mode == heard.mode] or self.tunes
        tune = fits[int(rng.integers(len(fits)))]
        heard = replace(heard, mode=tune.mode)
        variant = int(rng.choice(self.variants[heard.genre]))
        song = jittered(arrange(tune, heard, variant, self.seconds, rng), jitter * 0.12, rng)
        soundfont = self.soundfonts[int(rng.integers(len(self.soundfonts)))]
        with tempfile.TemporaryDirectory(prefix="deramos-arrange-") as tmp:
            audio = render_midi(write_midi(song, Path(tmp) / "song.mid"), soundfont, SAMPLE_RATE)
        audio = trim(audio, self.seconds, SAMPLE_RATE)
        if len(audio) < 4 * SAMPLE_RATE:
            raise RenderError(f"{tune.name}: only {len(audio) / SAMPLE_RATE:.1f} s rendered")
        audio = normalise(audio, float(rng.uniform(*PEAK[heard.dynamics])))
        return audio, heard, {"tune": tune.name, "style": heard.genre, "variant": variant, "soundfont": soundfont.name,
                              "tracks": [[t.channel, t.program] for t in song.tracks]}

    def recording_audio(self, rng) -> tuple[np.ndarray, RealAttributes, dict]:
        path = self.recordings[int(rng.integers(len(self.recordings)))]
        total = sf.info(str(path)).duration
        offset = float(rng.uniform(0.0, max(0.0, total - self.seconds - 1.0)))
        audio = load_recording(path, SAMPLE_RATE, offset, self.seconds)
        if len(audio) < 4 * SAMPLE_RATE or np.abs(audio).max() < 1e-3:
            raise RenderError(f"{path.name}: excerpt at {offset:.0f} s too short or silent")
        return audio, self.tag_attributes(audio), {"recording": str(path), "offset": round(offset, 2)}

    def tag_attributes(self, audio: np.ndarray) -> RealAttributes:
        """What musicnn's tags say the recording is (families without a tag are never chosen)."""
        import torch

        from ...model.musicnn import LABELS

        if self._tagger is None:
            self._tagger = _tagger()
        with torch.no_grad():
            frames, _ = self._tagger(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
        mtt = dict(zip(LABELS["MTT_musicnn"], frames[0, :, :50].mean(0).tolist()))
        msd = dict(zip(LABELS["MSD_musicnn"], frames[0, :, 50:].mean(0).tolist()))
        families = {"piano": mtt["piano"], "harpsichord": mtt["harpsichord"], "guitar": mtt["guitar"],
                    "strings": max(mtt["strings"], mtt["violin"], mtt["cello"]), "flute": mtt["flute"],
                    "choir": max(mtt["choir"], mtt["choral"]), "synth": max(mtt["synth"], mtt["electronic"])}
        genres = tag_genres(mtt, msd)
        return RealAttributes(
            genre=max(genres, key=genres.get),
            drums="drums" if max(mtt["drums"], mtt["beat"], mtt["beats"], mtt["techno"]) > DRUM_TAG else "no drums",
            instrument=max(families, key=families.get),
            ensemble="solo" if mtt["solo"] > 0.3 else "full",
            tempo_bpm=140.0 if mtt["fast"] > mtt["slow"] else 72.0,
            mode="major" if msd["happy"] >= msd["sad"] else "minor",
            dynamics="loud" if mtt["loud"] > max(mtt["quiet"], mtt["soft"]) else "soft")

    def _parse(self, path: str):
        from music21 import corpus

        if path not in self._scores:
            self._scores[path] = corpus.parse(path)
        return self._scores[path]


DRUM_TAG = 0.2    # the MTT drum/beat tag mean above which a recording counts as having drums


def tag_genres(mtt: dict, msd: dict) -> dict:
    """Canonical genre -> its strongest musicnn tag (MTT and MSD taggers); chiptune has no tag
    and is never chosen for a recording."""
    return {"classical": max(mtt["classical"], mtt["classic"]),
            "pop": max(mtt["pop"], msd["pop"], msd["indie pop"]),
            "rock": max(mtt["rock"], mtt["metal"], msd["rock"], msd["hard rock"], msd["metal"], msd["classic rock"]),
            # MSD's "electronic" runs high on orchestral game music too: it counts half
            "electronic": max(mtt["techno"], mtt["electronic"], mtt["dance"], 0.5 * msd["electronic"],
                              msd["electronica"], msd["electro"], msd["dance"], msd["House"]),
            "jazz": msd["jazz"], "folk": max(msd["folk"], msd["acoustic"], msd["country"], mtt["country"]),
            "ambient": max(mtt["ambient"], mtt["new age"], msd["ambient"], msd["chillout"])}


def _tagger():
    from ...model.config import AudioEncoderConfig
    from ...model.musicnn import PATCH_FRAMES, MusicnnEncoder

    return MusicnnEncoder(AudioEncoderConfig(arch="musicnn", sample_rate=SAMPLE_RATE, hop_length=256,
                                             backbones=("MTT_musicnn", "MSD_musicnn"), features=("taggram",),
                                             patch_hop=PATCH_FRAMES)).eval()


def synthesize_clip(plan: ClipPlan, profile, raters, renderer: Renderer, seed: int, wav_dir: Path,
                    people_share: float = 0.0) -> dict:
    rng = np.random.default_rng([seed, 1, plan.index])
    severities = draw_degradations(profile, rng)
    if plan.kind == "score":
        asked = plan.asked
        heard = asked
        for kind in TEMPLATE_KINDS:   # a score as written is classical, without drums
            if rng.random() < profile.mismatch_rate:
                heard = change_attribute(heard, kind, rng)
        audio, source = renderer.score_audio(heard, severities.get("timing_jitter", 0.0), rng)
        prompt = None   # the shared prompt_info text, filled in by build_corpus
    elif plan.kind == "arrangement":
        asked = plan.asked
        wrong = [kind for kind in PROMPT_KINDS if rng.random() < profile.mismatch_rate]
        heard = heard_arrangement(asked, wrong, tuple(renderer.variants), rng)
        audio, heard, source = renderer.arrangement_audio(heard, severities.get("timing_jitter", 0.0), rng)
        prompt = None   # the shared prompt_info text, filled in by build_corpus
    else:
        audio, heard, source = renderer.recording_audio(rng)
        asked = heard
        for kind in PROMPT_KINDS:
            if rng.random() < profile.mismatch_rate:
                asked = change_attribute(asked, kind, rng)
        prompt, asserts = make_prompt(asked, people_share, word_stream(rng, people_share, [seed, 7, plan.index]))
    if plan.kind != "recording":
        asserts = plan.asserts or assertion_of(asked)
    # Out-of-tune playing cannot be rendered into a General-MIDI score: pitch wobble stands in.
    effects = dict(severities)
    if "detune" in effects:
        effects["wobble"] = max(effects.get("wobble", 0.0), effects["detune"])
    audio = apply_degradations(audio, effects, rng, SAMPLE_RATE)
    sf.write(wav_dir / plan.wav, np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16),
             SAMPLE_RATE, subtype="PCM_16")

    matches = assertion_matches(asserts, heard)
    mi_heard = float(np.clip(latent_mi(severities) + rng.normal(0.0, 0.2), 1.0, 5.0))
    ta_heard = float(np.clip(asserted_ta(matches) + rng.normal(0.0, 0.2), 1.0, 5.0))
    panel = [raters[i] for i in rng.choice(len(raters), size=RATERS_PER_CLIP, replace=False)]
    mi_votes = _votes(mi_heard, lambda r: r.mi_bias, panel, rng)
    ta_votes = _votes(ta_heard, lambda r: r.ta_bias, panel, rng)
    ta = round(sum(ta_votes) / RATERS_PER_CLIP, 1)
    cf_rng = np.random.default_rng([seed, 2, plan.index])
    return {
        "wav": plan.wav, "system": plan.system, "profile": profile.name, "split": plan.split,
        "prompt_id": plan.prompt_id, "kind": plan.kind,
        "prompt_source": "demo_prompt_info" if plan.kind == "recording" else "prompt_info",
        "prompt": prompt, "seconds": round(len(audio) / SAMPLE_RATE, 3), "source": source,
        "prompt_attributes": asked.to_dict(), "prompt_asserts": _jsonable(asserts),
        "rendered_attributes": heard.to_dict(), "matches": matches,
        "degradations": severities, "mi_votes": mi_votes, "ta_votes": ta_votes,
        "mi": round(sum(mi_votes) / RATERS_PER_CLIP, 1), "ta": ta,
        "counterfactuals": counterfactuals(asked, heard, asserts, ta, cf_rng, people_share),
    }


def _jsonable(asserts: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asserts.items()}


def counterfactuals(asked: RealAttributes, heard: RealAttributes, own: dict, rated_ta: float, rng,
                    people_share: float) -> list[list]:
    """COUNTERFACTUALS_PER_CLIP [prompt, TA] pairs in random order. Template corpora
    (people_share 0): template prompts with one or two kinds changed. Otherwise CF_MIX of them:
    template ones, partial prompts as people write them (right or wrong,
    phrasing.counterfactual_pair) and prompts about something that is not music at all, which
    the raters give 1."""
    if people_share <= 0.0:
        return [list(counterfactual(asked, heard, rated_ta, rng, own)) for _ in range(COUNTERFACTUALS_PER_CLIP)]
    pairs = [list(counterfactual(asked, heard, rated_ta, rng, own)) for _ in range(CF_MIX["template"])]
    for _ in range(CF_MIX["people"]):
        pair = phrasing.counterfactual_pair(asked, heard, rated_ta, rng, own=own)
        pairs.append(list(unused_by_evaluation(pair, lambda r: phrasing.counterfactual_pair(asked, heard, rated_ta, r,
                                                                                         own=own))))
    pairs += [[unused_by_evaluation(phrasing.unrelated_prompt(rng), phrasing.unrelated_prompt), 1.0]
              for _ in range(CF_MIX["unrelated"])]
    return [pairs[i] for i in rng.permutation(len(pairs))]


# --------------------------------------------------------------------------- corpus


def build_corpus(out_dir, which: str = "train", systems: int = 8, clips_per_system: int = 60,
                 recording_share: float = 0.25, pieces: int = 80, seconds: float = 8.0, seed: int = 0,
                 workers: int = 1, progress: bool = True, arrangement_share: float = 0.0, tunes: int = 120,
                 people_share: float = 0.0, one_family_systems: int = 0) -> dict:
    """Write a real-music MOS corpus (`which`: train or heldout) to `out_dir`; return a summary.

    Of the clips, `recording_share` are recordings, `arrangement_share` arranged tunes (of
    `tunes` parsed), the rest scores. Of the prompts, `people_share` are written as people write
    them (realmusic/phrasing.py: 1-4 kinds), the rest name all five template kinds; with
    people_share > 0 the counterfactual prompts are mixed too (corpus.counterfactuals).
    `one_family_systems` systems follow the `systems` archetype ones (OneFamilyProfile)."""
    from tqdm import tqdm

    started = time.perf_counter()
    if which not in SOURCES:
        raise ValueError(f"unknown set {which!r}; choose from {sorted(SOURCES)}")
    if recording_share + arrangement_share > 1.0 + 1e-9:
        raise ValueError(f"recording share {recording_share} + arrangement share {arrangement_share} exceed 1")
    source = SOURCES[which]
    out = Path(out_dir)
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    rng = np.random.default_rng([seed, 3])
    pool = piece_pool(source["composers"], pieces, rng, problems)
    recordings = recording_files(source["recordings"])
    if not pool or (recording_share > 0 and not recordings):
        raise RenderError(f"{which}: no scores ({len(pool)}) or no recordings ({len(recordings)}) found "
                          f"(pip install music21; apt-get install {' '.join(source['recordings'])})")
    tune_list = tune_pool(source["tunes"], tunes, np.random.default_rng([seed, 5]), problems) if arrangement_share > 0 else []
    if arrangement_share > 0 and not tune_list:
        raise RenderError(f"{which}: no tunes parsed from {', '.join(source['tunes'])}")
    renderer = Renderer(pool, recordings, [find_soundfont(name) for name in source["soundfonts"]], seconds,
                        tune_list, source["variants"])
    profiles, plans, raters, prompts = plan_corpus(systems, clips_per_system, recording_share, seed, which == "heldout",
                                                   arrangement_share, tuple(source["variants"]), people_share,
                                                   one_family_systems)
    jobs = [(plan, profiles[plan.system], raters, seed, str(wav_dir), people_share) for plan in plans]
    records = []
    for result in tqdm(_run(jobs, renderer, workers), total=len(jobs), desc=f"realmusic {which}", disable=not progress):
        (records if isinstance(result, dict) else problems).append(result)
    records.sort(key=lambda r: r["wav"])
    for record in records:
        if record["prompt"] is None:
            record["prompt"] = next(text for pid, _, text, _ in prompts if pid == record["prompt_id"])
    _write_tables(out, records, [(pid, attrs, text) for pid, attrs, text, _ in prompts])
    summary = _summary(out, which, records, problems, pool, recordings, source, started)
    summary.update(_arrangement_summary(records, tune_list, source))
    (out / "sources.json").write_text(json.dumps(summary, indent=1))
    return summary


def _arrangement_summary(records, tune_list, source) -> dict:
    arranged = [r for r in records if r["kind"] == "arrangement"]
    used = {}
    for r in arranged:
        used.setdefault(r["source"]["style"], set()).add(r["source"]["variant"])
    return {"arrangements": len(arranged), "tune_collections": list(source["tunes"]), "tunes_in_pool": len(tune_list),
            "tunes_used": len({r["source"]["tune"] for r in arranged}),
            "styles": {s: list(v) for s, v in source["variants"].items()},
            "styles_used": {s: sorted(v) for s, v in sorted(used.items())}, "tune_licence": LICENCES["music21-tunes"]}


_RENDERER: Renderer | None = None


def _init_worker(renderer: Renderer) -> None:
    global _RENDERER
    import torch

    torch.set_num_threads(1)
    _RENDERER = renderer


def _one(job):
    plan, profile, raters, seed, wav_dir, people_share = job
    try:
        return synthesize_clip(plan, profile, raters, _RENDERER, seed, Path(wav_dir), people_share)
    except RenderError as error:
        return f"{plan.wav}: {error}"


def _run(jobs, renderer: Renderer, workers: int):
    if workers <= 1:
        _init_worker(renderer)
        yield from map(_one, jobs)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers, _init_worker, (renderer,)) as pool:
        yield from pool.imap(_one, jobs, chunksize=2)


def _summary(out, which, records, problems, pool, recordings, source, started) -> dict:
    used_recordings = {r["source"].get("recording") for r in records} - {None}
    return {
        "set": which, "clips": len(records), "problems": problems,
        "splits": {s: sum(r["split"] == s for r in records) for s in ("train", "dev", "test")},
        "scores": sum(r["kind"] == "score" for r in records), "recordings": sum(r["kind"] == "recording" for r in records),
        "pieces_in_pool": len(pool), "pieces_used": len({r["source"].get("piece") for r in records} - {None}),
        "recording_files_used": len(used_recordings),
        "composers": list(source["composers"]),
        "soundfonts": {name: {"package": SOUNDFONTS[name][0], "licence": SOUNDFONTS[name][1]} for name in source["soundfonts"]},
        "recording_packages": {p: LICENCES[p] for p in source["recordings"]},
        "score_licence": LICENCES["music21"],
        "mean_mi": float(np.mean([r["mi"] for r in records])), "mean_ta": float(np.mean([r["ta"] for r in records])),
        "audio_seconds": float(sum(r["seconds"] for r in records)), "wall_seconds": time.perf_counter() - started,
        "cpu_count": os.cpu_count(),
    }
