"""A synthetic MOS corpus laid out exactly like MusicEval (AudioMOS 2025 track 1).

Simulated text-to-music "systems" render prompts with their own habits: some are
clean and faithful, some noisy, some clip, some ignore the prompt. Each clip gets a
latent music impression (MI, from its degradations) and text alignment (TA, from the
prompt attributes it honours); five simulated raters with their own bias and noise
turn those into integer votes whose means are the published scores.

Layout written under ``out_dir``::

    wav/audiomos2025-track1-S002_P044.wav     16 kHz mono PCM_16
    sets/{train,dev,test}_mos_list.txt         wav,MI,TA
    prompt_info.txt                            P044<TAB>prompt
    demo_prompt_info.txt                       <wav name><TAB>prompt   (demo systems)
    system_mos/system_mos_phase1.csv           sysID,MI,TA
    synth_meta.jsonl                           everything behind each score
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from .degrade import FAMILIES, apply_degradations
from .music import (
    PROGRESSIONS,
    PROMPT_KINDS,
    SAMPLE_RATE,
    TEMPO_BANDS,
    ClipAttributes,
    attribute_matches,
    change_attribute,
    prompt_for,
    random_attributes,
    render_clip,
)

WAV_PREFIX = "audiomos2025-track1-"
SPLITS = ("train", "dev", "test")
RATERS_PER_CLIP = 5

# How much each degradation family costs MI at full severity (inside an exp, see latent_mi).
MI_WEIGHTS = {
    "noise": 1.3,
    "clipping": 1.1,
    "lowpass": 0.8,
    "dropouts": 1.4,
    "detune": 1.2,
    "timing_jitter": 0.9,
    "codec": 1.0,
    "reverb": 0.6,
    "bitcrush": 1.1,
    "wobble": 1.0,
}
# How much each prompt attribute kind matters to TA; sums to 1.
TA_WEIGHTS = {"instrument": 0.30, "genre": 0.25, "mood": 0.20, "tempo": 0.15, "dynamics": 0.10}


def latent_mi(severities: dict[str, float], clip_noise: float = 0.0) -> float:
    """Noise-free MI: 4.7 for clean audio, falling towards 1 as degradations pile up."""
    penalty = sum(MI_WEIGHTS[name] * severity**1.2 for name, severity in severities.items())
    return float(np.clip(1.0 + 3.7 * math.exp(-penalty) + clip_noise, 1.0, 5.0))


def latent_ta(matches: dict[str, bool], clip_noise: float = 0.0) -> float:
    """Noise-free TA: 1 when nothing asked for is heard, 4.7 when everything is."""
    matched = sum(TA_WEIGHTS[kind] for kind, ok in matches.items() if ok)
    return float(np.clip(1.0 + 3.7 * matched + clip_noise, 1.0, 5.0))


# --------------------------------------------------------------------------- systems


@dataclass(frozen=True)
class SystemProfile:
    """A simulated TTM system's habits."""

    name: str
    degradations: dict  # family -> (chance per clip, mean severity when present)
    mismatch_rate: float  # chance that each prompt attribute kind comes out wrong


# Ordered so that the first few already span the quality space (small test corpora).
ARCHETYPES = (
    SystemProfile("studio", {"reverb": (0.2, 0.15)}, 0.05),
    SystemProfile(
        "chaotic",
        {"noise": (0.6, 0.5), "codec": (0.6, 0.6), "dropouts": (0.5, 0.5), "detune": (0.5, 0.5), "timing_jitter": (0.5, 0.5), "clipping": (0.3, 0.5)},
        0.45,
    ),
    SystemProfile("prompt_ignorer", {"lowpass": (0.2, 0.2)}, 0.7),
    SystemProfile("noisy", {"noise": (0.95, 0.65), "bitcrush": (0.3, 0.4)}, 0.15),
    SystemProfile("lofi_faithful", {"lowpass": (0.9, 0.6), "codec": (0.8, 0.5)}, 0.06),
    SystemProfile("clipper", {"clipping": (0.9, 0.6), "bitcrush": (0.4, 0.4)}, 0.2),
    SystemProfile("glitchy", {"dropouts": (0.9, 0.5), "timing_jitter": (0.7, 0.5)}, 0.25),
    SystemProfile("detuned", {"detune": (0.9, 0.55), "wobble": (0.7, 0.5)}, 0.15),
    SystemProfile("muddy", {"reverb": (0.9, 0.7), "lowpass": (0.6, 0.45)}, 0.3),
    SystemProfile("decent", {"noise": (0.4, 0.2), "codec": (0.4, 0.25), "timing_jitter": (0.3, 0.2)}, 0.12),
)


def _random_profile(index: int, rng) -> SystemProfile:
    """An extra system beyond the archetypes: a random mix of 2-4 families."""
    families = rng.choice(FAMILIES, size=int(rng.integers(2, 5)), replace=False)
    degradations = {str(f): (round(float(rng.uniform(0.3, 0.9)), 2), round(float(rng.uniform(0.15, 0.7)), 2)) for f in sorted(families)}
    return SystemProfile(f"random_{index}", degradations, round(float(rng.uniform(0.05, 0.5)), 2))


def build_profiles(count: int, rng) -> list[SystemProfile]:
    """`count` profiles (archetypes first), shuffled so S001 is not always the best."""
    profiles = list(ARCHETYPES[:count]) + [_random_profile(i, rng) for i in range(count - len(ARCHETYPES))]
    return [profiles[i] for i in rng.permutation(count)]


def _render_attributes(prompt: ClipAttributes, profile: SystemProfile, rng) -> ClipAttributes:
    """What the system actually renders for a prompt: some kinds wrong, free choices its own."""
    rendered = prompt
    for kind in PROMPT_KINDS:
        if rng.random() < profile.mismatch_rate:
            rendered = change_attribute(rendered, kind, rng)
    low, high = TEMPO_BANDS[rendered.tempo_word]
    mode = rendered.mode
    return replace(
        rendered,
        tempo_bpm=round(float(np.clip(rendered.tempo_bpm * rng.uniform(0.96, 1.04), low, high)), 1),
        accompaniment=str(rng.choice(("piano", "organ", "guitar", "pad"))),
        progression=int(rng.integers(len(PROGRESSIONS[mode]))),
    )


def _draw_degradations(profile: SystemProfile, rng) -> dict[str, float]:
    """Severities for one clip: each family of the profile shows up by chance, Beta-distributed."""
    severities = {}
    for family in FAMILIES:
        if family not in profile.degradations:
            continue
        chance, mean = profile.degradations[family]
        if rng.random() < chance:
            concentration = 8.0
            severities[family] = round(float(rng.beta(mean * concentration, (1 - mean) * concentration)), 3)
    return severities


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ClipPlan:
    """Everything decided about a clip before it is rendered."""

    index: int
    wav: str
    system: str
    prompt_id: str
    prompt: str
    prompt_attributes: ClipAttributes
    prompt_source: str  # "prompt_info" or "demo_prompt_info"
    seconds: float
    split: str


@dataclass(frozen=True)
class Rater:
    mi_bias: float
    ta_bias: float
    noise: float


def _ids(prefix: str, count: int) -> list[str]:
    width = max(3, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def _split_sizes(counts: list[int]) -> list[dict[str, int]]:
    """Per-system split sizes: about 70/15/15 overall, at least one clip in every split.

    Rounding the cumulative total spreads the remainders over systems, so ten
    systems of 10 clips get 15 dev clips in all rather than 10 or 20.
    """
    sizes, total = [], 0
    for n in counts:
        before, total = total, total + n
        held_out = max(1, math.floor(0.15 * total + 0.5) - math.floor(0.15 * before + 0.5))
        sizes.append({"train": n - 2 * held_out, "dev": held_out, "test": held_out})
    return sizes


class Draft(NamedTuple):
    """A clip before its length and split are drawn."""

    system: str
    prompt_id: str
    prompt: str
    attributes: ClipAttributes
    source: str  # "prompt_info" or "demo_prompt_info"


@dataclass(frozen=True)
class CorpusPlan:
    """Everything decided about a corpus before any clip is rendered."""

    profiles: dict[str, SystemProfile]  # system id -> its habits
    clips: list[ClipPlan]  # sorted by wav name
    raters: list[Rater]
    prompts: list[tuple[str, ClipAttributes, str]]  # the shared prompts: (id, attributes, text)


def plan_corpus(clips: int, systems: int, seed: int, min_seconds: float, max_seconds: float) -> CorpusPlan:
    """Decide systems, raters, prompts, file names, lengths and splits (one random stream, drawn
    in a fixed order: the same arguments give the same plan)."""
    if systems < 1 or clips < 3 * systems:
        raise ValueError(f"need at least 3 clips per system (got {clips} clips for {systems} systems)")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError("need 0 < min_seconds <= max_seconds")
    rng = np.random.default_rng([seed, 0])
    system_ids = _ids("S", systems)
    profiles = dict(zip(system_ids, build_profiles(systems, rng)))
    raters = [Rater(float(rng.normal(0, 0.3)), float(rng.normal(0, 0.3)), float(rng.uniform(0.35, 0.6))) for _ in range(8)]
    # Like MusicEval, one or two "demo" systems come with their own prompt file.
    n_demo = 0 if systems < 3 else 1 if systems < 8 else 2
    demo_systems = {system_ids[i] for i in rng.choice(systems, size=n_demo, replace=False)}
    per_system = {sid: clips // systems + (1 if i < clips % systems else 0) for i, sid in enumerate(system_ids)}
    prompts = _shared_prompts(per_system, demo_systems, rng)
    drafts = _draft_clips(per_system, demo_systems, prompts, rng)
    split_of = _draw_splits(drafts, per_system, rng)
    seconds = {(d.system, d.prompt_id): round(float(rng.uniform(min_seconds, max_seconds)), 3) for d in drafts}
    plans = [ClipPlan(index, f"{WAV_PREFIX}{d.system}_{d.prompt_id}.wav", d.system, d.prompt_id, d.prompt, d.attributes,
                      d.source, seconds[(d.system, d.prompt_id)], split_of[(d.system, d.prompt_id)])
             for index, d in enumerate(sorted(drafts, key=lambda d: (d.system, d.prompt_id)))]
    return CorpusPlan(profiles, plans, raters, prompts)


def _shared_prompts(per_system: dict[str, int], demo_systems: set[str], rng) -> list[tuple[str, ClipAttributes, str]]:
    """Enough prompts for the largest regular system, and for every prompt to serve ~3 clips."""
    regular = [sid for sid in per_system if sid not in demo_systems]
    shared_clips = sum(per_system[sid] for sid in regular)
    n_prompts = max([per_system[sid] for sid in regular] + [math.ceil(shared_clips / 3)])
    prompt_attributes = [random_attributes(rng) for _ in range(n_prompts)]
    return [(pid, attrs, prompt_for(attrs, rng)) for pid, attrs in zip(_ids("P", n_prompts), prompt_attributes)]


def _draft_clips(per_system: dict[str, int], demo_systems: set[str], prompts: list, rng) -> list[Draft]:
    """Demo systems get prompts of their own; the others take the shared prompts cyclically from
    one shuffled order: distinct within a system, every prompt shared by about as many systems."""
    order = rng.permutation(len(prompts))
    cursor = 0
    drafts = []
    for sid, n in per_system.items():
        if sid in demo_systems:
            for pid in _ids("P", n):
                attrs = random_attributes(rng)
                drafts.append(Draft(sid, pid, prompt_for(attrs, rng), attrs, "demo_prompt_info"))
        else:
            for k in range(n):
                pid, attrs, text = prompts[order[(cursor + k) % len(prompts)]]
                drafts.append(Draft(sid, pid, text, attrs, "prompt_info"))
            cursor += n
    return drafts


def _draw_splits(drafts: list[Draft], per_system: dict[str, int], rng) -> dict[tuple[str, str], str]:
    """(system, prompt id) -> split: each system's clips shuffled into its train/dev/test sizes."""
    split_of = {}
    for sid, sizes in zip(per_system, _split_sizes(list(per_system.values()))):
        mine = [d for d in drafts if d.system == sid]
        labels = [name for name, size in sizes.items() for _ in range(size)]
        for draft, label in zip([mine[i] for i in rng.permutation(len(mine))], labels):
            split_of[(draft.system, draft.prompt_id)] = label
    return split_of


# --------------------------------------------------------------------------- clips


def _votes(latent: float, bias_of, raters: list[Rater], rng) -> list[int]:
    return [int(np.clip(np.rint(latent + bias_of(r) + rng.normal(0.0, r.noise)), 1, 5)) for r in raters]


def synthesize_clip(plan: ClipPlan, profile: SystemProfile, raters: list[Rater], seed: int, wav_dir: Path) -> dict:
    """Render, degrade, write and score one clip; return its metadata record."""
    rng = np.random.default_rng([seed, 1, plan.index])  # per clip: order- and worker-independent
    rendered = _render_attributes(plan.prompt_attributes, profile, rng)
    severities = _draw_degradations(profile, rng)
    audio = render_clip(
        rendered,
        rng,
        SAMPLE_RATE,
        plan.seconds,
        timing_jitter=severities.get("timing_jitter", 0.0),
        detune=severities.get("detune", 0.0),
    )
    audio = apply_degradations(audio, severities, rng, SAMPLE_RATE)
    pcm = np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(wav_dir / plan.wav, pcm, SAMPLE_RATE, subtype="PCM_16")

    matches = attribute_matches(plan.prompt_attributes, rendered)
    mi = latent_mi(severities)
    ta = latent_ta(matches)
    # Clip-level noise: things about a clip that raters react to and we do not model.
    mi_heard = float(np.clip(mi + rng.normal(0.0, 0.2), 1.0, 5.0))
    ta_heard = float(np.clip(ta + rng.normal(0.0, 0.2), 1.0, 5.0))
    panel = [raters[i] for i in rng.choice(len(raters), size=RATERS_PER_CLIP, replace=False)]
    mi_votes = _votes(mi_heard, lambda r: r.mi_bias, panel, rng)
    ta_votes = _votes(ta_heard, lambda r: r.ta_bias, panel, rng)
    return {
        "wav": plan.wav,
        "system": plan.system,
        "profile": profile.name,
        "split": plan.split,
        "prompt_id": plan.prompt_id,
        "prompt_source": plan.prompt_source,
        "prompt": plan.prompt,
        "seconds": plan.seconds,
        "prompt_attributes": plan.prompt_attributes.to_dict(),
        "rendered_attributes": rendered.to_dict(),
        "matches": matches,
        "degradations": severities,
        "latent_mi": round(mi, 4),
        "latent_ta": round(ta, 4),
        "mi_votes": mi_votes,
        "ta_votes": ta_votes,
        "mi": round(sum(mi_votes) / RATERS_PER_CLIP, 1),
        "ta": round(sum(ta_votes) / RATERS_PER_CLIP, 1),
    }


# --------------------------------------------------------------------------- files


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _remove_stale_wavs(wav_dir: Path, keep: set[str]) -> None:
    """Drop clips of an earlier, different corpus in the same folder (ours only)."""
    for path in wav_dir.glob(f"{WAV_PREFIX}S*_P*.wav"):
        if path.name not in keep:
            path.unlink()


def _write_tables(out: Path, records: list[dict], prompts: list) -> dict:
    for split in SPLITS:
        rows = [r for r in records if r["split"] == split]
        _write_lines(out / "sets" / f"{split}_mos_list.txt", (f"{r['wav']},{r['mi']:.1f},{r['ta']:.1f}" for r in rows))
    _write_lines(out / "prompt_info.txt", (f"{pid}\t{text}" for pid, _, text in prompts))
    _write_lines(out / "demo_prompt_info.txt", (f"{r['wav']}\t{r['prompt']}" for r in records if r["prompt_source"] == "demo_prompt_info"))

    system_means = {}
    for system in sorted({r["system"] for r in records}):
        mine = [r for r in records if r["system"] == system]
        system_means[system] = (float(np.mean([r["mi"] for r in mine])), float(np.mean([r["ta"] for r in mine])))
    _write_lines(
        out / "system_mos" / "system_mos_phase1.csv",
        ["sysID,MI,TA"] + [f"{s},{mi:.6f},{ta:.6f}" for s, (mi, ta) in system_means.items()],
    )
    _write_lines(out / "synth_meta.jsonl", (json.dumps(r) for r in records))
    return system_means


def generate_corpus(
    out_dir,
    clips: int = 300,
    systems: int = 10,
    seed: int = 0,
    min_seconds: float = 4.0,
    max_seconds: float = 10.0,
    progress: bool = True,
) -> dict:
    """Write a MusicEval-shaped synthetic corpus to `out_dir`; return a summary dict.

    The same arguments always give byte-identical files.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    planned = plan_corpus(clips, systems, seed, min_seconds, max_seconds)
    _remove_stale_wavs(wav_dir, {p.wav for p in planned.clips})

    records = [
        synthesize_clip(plan, planned.profiles[plan.system], planned.raters, seed, wav_dir)
        for plan in tqdm(planned.clips, desc="deramos-synth", unit="clip", disable=not progress)
    ]
    system_means = _write_tables(out, records, planned.prompts)

    mi_means = [mi for mi, _ in system_means.values()]
    ta_means = [ta for _, ta in system_means.values()]
    return {
        "out_dir": str(out),
        "clips": len(records),
        "systems": len(system_means),
        "splits": {split: sum(r["split"] == split for r in records) for split in SPLITS},
        "demo_systems": sorted({r["system"] for r in records if r["prompt_source"] == "demo_prompt_info"}),
        "prompts": len(planned.prompts),
        "mean_mi": float(np.mean([r["mi"] for r in records])),
        "mean_ta": float(np.mean([r["ta"] for r in records])),
        "system_mi_range": float(max(mi_means) - min(mi_means)),
        "system_ta_range": float(max(ta_means) - min(ta_means)),
        "audio_seconds": float(sum(p.seconds for p in planned.clips)),
        "wall_seconds": time.perf_counter() - started,
        "profiles": {sid: planned.profiles[sid].name for sid in sorted(planned.profiles)},
    }
