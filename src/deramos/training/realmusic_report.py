"""The real-music held-out report (deramos-realmusic corpus --set heldout): what a model hears on real music.

Per model: utterance and system SRCC for MI and TA (the clips' own prompts); matched vs
mismatched prompt AUC (each clip scored with a prompt describing what it really is and with
one that gets 2-3 kinds wrong), and the paired rate of clips whose own prompt wins, with its
95 % Wilson interval; the same with one kind wrong at a time; mean MI of clean clips and of
heavily degraded ones (latent MI <= 2); |dMI| between PCM16 and PCM24 / float WAV and MP3 /
Ogg Vorbis of the same clip. Used by `deramos-realmusic report` and deramos.training.ablation.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from ..data.musiceval import read_split, read_system_mos
from ..data.realmusic.attributes import PROMPT_KINDS, RealAttributes, change_attribute, mismatched, prompt_for
from ..data.realmusic.freeform import PROMPT_SET_DIR, draw_pairs, freeform_metrics, load_prompt_set
from ..data.synth.corpus import latent_mi
from ..runtime.audio import load_audio, resample
from ..runtime.metrics import auc, evaluate, wilson
from .features import Featurizer, predict

# name -> (container, subtype, sample rate (None: the model's), libsndfile options). Lossy files are
# written at 44.1 kHz as music is distributed: MP3 at a constant 192 kbps, Vorbis at ~190 kbps.
FORMATS = {"PCM_24": ("WAV", "PCM_24", None, {}), "FLOAT": ("WAV", "FLOAT", None, {}),
           "MP3": ("MP3", None, 44100, {"bitrate_mode": "CONSTANT", "compression_level": 0.4}),
           "OGG": ("OGG", "VORBIS", 44100, {"compression_level": 0.05})}


def read_records(data: Path) -> dict:
    """synth_meta.jsonl of a deramos-realmusic set, by file name."""
    lines = (Path(data) / "synth_meta.jsonl").read_text().splitlines()
    return {record["wav"]: record for record in map(json.loads, lines)}


def evaluate_model(model, data: Path, format_clips: int = 24, cache_dir: Path | None = None,
                   keep_predictions: bool = False) -> dict:
    """Every number of the report for one model on the held-out set in `data` (its test list);
    with keep_predictions, the per-clip scores too (for paired comparisons between models)."""
    records = read_records(data)
    clips = read_split(data, "test").clips
    waves = [load_audio(c.path, model.cfg.audio.sample_rate) for c in clips]
    featurizer = Featurizer(model, cache_dir=cache_dir)   # frozen encoders: each clip encoded once
    mi, ta = predict(featurizer, waves, [c.prompt for c in clips])
    true = {"MI": np.array([c.mi for c in clips]), "TA": np.array([c.ta for c in clips])}
    metrics = evaluate([c.system_id for c in clips], {"MI": mi, "TA": ta}, true, read_system_mos(data))
    rng = np.random.default_rng(0)
    heard = [RealAttributes.from_dict(records[c.path.name]["rendered_attributes"]) for c in clips]
    matched = [prompt_for(h, rng) for h in heard]
    wrong = [prompt_for(mismatched(h, rng), rng) for h in heard]
    _, ta_matched = predict(featurizer, waves, matched)
    _, ta_mismatched = predict(featurizer, waves, wrong)
    per_kind = {}
    for kind in PROMPT_KINDS:   # one kind wrong at a time: which attributes TA hears
        _, ta_one = predict(featurizer, waves, [prompt_for(change_attribute(h, kind, rng), rng) for h in heard])
        per_kind[kind] = paired_wins(ta_matched, ta_one)
    severity = np.array([latent_mi(records[c.path.name]["degradations"]) for c in clips])
    clean = np.array([not records[c.path.name]["degradations"] for c in clips])
    report = {
        "clips": len(clips), "metrics": metrics,
        "mi_by_degradation": mi_by_degradation([records[c.path.name]["degradations"] for c in clips], mi),
        "reward_replay": {
            "MI": reward_replay([c.prompt_id for c in clips], true["MI"], mi),
            "0.5MI+0.5TA": reward_replay([c.prompt_id for c in clips], (true["MI"] + true["TA"]) / 2, (mi + ta) / 2)},
        "matched_vs_mismatched_auc": round(auc(ta_matched, ta_mismatched), 3),
        "paired_wins": paired_wins(ta_matched, ta_mismatched),
        "paired_wins_one_kind_wrong": per_kind,
        "ta_matched_mean": round(float(ta_matched.mean()), 3), "ta_mismatched_mean": round(float(ta_mismatched.mean()), 3),
        "mi_clean_mean": round(float(mi[clean].mean()), 3), "clean_clips": int(clean.sum()),
        "mi_heavy_mean": round(float(mi[severity <= 2.0].mean()), 3), "heavy_clips": int((severity <= 2.0).sum()),
        "format_delta_mi": format_deltas(featurizer, waves[:format_clips], [c.prompt for c in clips[:format_clips]],
                                         model.cfg.audio.sample_rate),
    }
    if keep_predictions:
        report["predictions"] = {"mi": mi.tolist(), "ta": ta.tolist(), "mi_true": true["MI"].tolist(),
                                 "ta_true": true["TA"].tolist(), "ta_matched": ta_matched.tolist(),
                                 "ta_mismatched": ta_mismatched.tolist()}
    return report


def mi_by_degradation(degradations: list[dict], mi: np.ndarray) -> dict:
    """Per degradation family: SRCC(MI, severity) over the clean clips and the clips with that
    family alone (other families would confound it), with how many clips that is."""
    from scipy.stats import spearmanr

    out = {}
    for family in sorted({name for d in degradations for name in d}):
        keep = [i for i, d in enumerate(degradations) if set(d) <= {family}]
        severity = np.array([degradations[i].get(family, 0.0) for i in keep])
        alone = int(sum(1 for i in keep if degradations[i]))
        srcc = spearmanr(mi[keep], severity).statistic if alone >= 3 and len(set(severity)) > 1 else float("nan")
        out[family] = {"srcc": round(float(srcc), 3), "clips_with_it_alone": alone, "clean_clips": len(keep) - alone}
    return out


def reward_replay(groups: list[str], true: np.ndarray, predicted: np.ndarray) -> dict:
    """A reward filter replayed: among the versions of each prompt (the systems' answers), pick the
    one the model scores best; the share of the oracle's gain over a random pick it captures."""
    picked, random, oracle, n = [], [], [], 0
    for group in sorted(set(groups)):
        index = [i for i, g in enumerate(groups) if g == group]
        if len(index) < 2:
            continue
        n += 1
        picked.append(true[index[int(np.argmax(predicted[index]))]])
        random.append(true[index].mean())
        oracle.append(true[index].max())
    gain = float(np.mean(oracle) - np.mean(random)) if n else 0.0
    share = (float(np.mean(picked) - np.mean(random)) / gain) if gain > 0 else float("nan")
    return {"groups": n, "share_of_oracle_gain": round(share, 3)}


def paired_wins(ta_matched: np.ndarray, ta_mismatched: np.ndarray) -> dict:
    """How often a clip's own description beats the wrong one for the same clip (the paired view
    of the AUC, which also compares different clips), with its 95 % interval."""
    wins = int((ta_matched > ta_mismatched).sum())
    low, high = wilson(wins, len(ta_matched))
    return {"wins": wins, "clips": len(ta_matched), "rate": round(wins / len(ta_matched), 3),
            "ci95": [round(low, 3), round(high, 3)]}


def format_deltas(featurizer, waves, prompts, rate) -> dict:
    """Mean and max |dMI| against the PCM16 WAV of the same audio ({} for no clips)."""
    if not waves:
        return {}
    base_mi, _ = predict(featurizer, waves, prompts)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (container, subtype, file_rate, options) in FORMATS.items():
            decoded = []
            for i, wave in enumerate(waves):
                path = Path(tmp) / f"{i}.{container.lower()}"
                data = resample(wave, rate, file_rate) if file_rate else wave
                sf.write(path, data, file_rate or rate, format=container, subtype=subtype, **options)
                decoded.append(load_audio(path, rate))
            mi, _ = predict(featurizer, decoded, prompts)
            delta = np.abs(mi - base_mi)
            out[name] = {"mean": round(float(delta.mean()), 4), "max": round(float(delta.max()), 4)}
    return out


def markdown(results: dict) -> str:
    lines = ["| model | utt MI | utt TA | sys MI | sys TA | AUC matched/mismatched | paired wins (95 % CI) | MI clean | MI heavy | "
             "max dMI MP3 | max dMI OGG | max dMI PCM24 | max dMI float |", "|" + "---|" * 13]
    for name, r in results.items():
        u, s, f = r["metrics"]["utterance"], r["metrics"]["system"], r["format_delta_mi"]
        w = r["paired_wins"]
        f = {fmt: f.get(fmt, {"max": float("nan")}) for fmt in FORMATS}
        lines.append(f"| {name} | {u['MI']['SRCC']:.3f} | {u['TA']['SRCC']:.3f} | {s['MI']['SRCC']:.3f} | "
                     f"{s['TA']['SRCC']:.3f} | {r['matched_vs_mismatched_auc']:.3f} | "
                     f"{w['rate']:.2f} ({w['ci95'][0]:.2f}-{w['ci95'][1]:.2f}) | {r['mi_clean_mean']:.2f} "
                     f"({r['clean_clips']}) | {r['mi_heavy_mean']:.2f} ({r['heavy_clips']}) | {f['MP3']['max']:.3f} | "
                     f"{f['OGG']['max']:.3f} | {f['PCM_24']['max']:.4f} | {f['FLOAT']['max']:.4f} |")
    lines += ["", "Reward-filter replay (pick the best of each prompt's versions; share of the oracle's gain "
              "over a random pick):", "", "| model | by MI | by 0.5 MI + 0.5 TA | prompts |", "|---|---|---|---|"]
    for name, r in results.items():
        replay = r.get("reward_replay")
        if replay:
            lines.append(f"| {name} | {replay['MI']['share_of_oracle_gain']:.2f} | "
                         f"{replay['0.5MI+0.5TA']['share_of_oracle_gain']:.2f} | {replay['MI']['groups']} |")
    families = sorted({f for r in results.values() for f in r.get("mi_by_degradation", {})})
    if families:
        lines += ["", "SRCC(MI, severity) per degradation family (clean clips + clips with that family alone; "
                  "clips with it alone in brackets):", "", "| model | " + " | ".join(families) + " |",
                  "|" + "---|" * (len(families) + 1)]
        for name, r in results.items():
            by = r.get("mi_by_degradation", {})
            lines.append(f"| {name} | " + " | ".join(
                f"{by[f]['srcc']:.2f} ({by[f]['clips_with_it_alone']})" if f in by else "—" for f in families) + " |")
    lines += ["", "Paired wins with one kind wrong (the clip's own prompt vs the same prompt with one attribute "
              "changed):", "", "| model | " + " | ".join(PROMPT_KINDS) + " |", "|" + "---|" * (len(PROMPT_KINDS) + 1)]
    for name, r in results.items():
        one = r["paired_wins_one_kind_wrong"]
        lines.append(f"| {name} | " + " | ".join(f"{one[k]['rate']:.2f}" for k in PROMPT_KINDS) + " |")
    return "\n".join(lines) + "\n"


def evaluate_freeform(model, data: Path, prompt_set: Path = PROMPT_SET_DIR, cache_dir: Path | None = None,
                      seed: int = 0) -> dict:
    """The free-form numbers for one model on a deramos-realmusic held-out set (its test list)."""
    records = read_records(data)
    clips = read_split(data, "test").clips
    heard = [RealAttributes.from_dict(records[c.path.name]["rendered_attributes"]) for c in clips]
    described, unrelated = load_prompt_set(prompt_set)
    pairs = draw_pairs(heard, described, unrelated, np.random.default_rng(seed))
    waves = [load_audio(c.path, model.cfg.audio.sample_rate) for c in clips]
    # each clip is paired with ~16 prompts: without a cache its frozen encoding would run 16 times
    with tempfile.TemporaryDirectory() as scratch:
        featurizer = Featurizer(model, cache_dir=cache_dir or scratch)
        _, ta = predict(featurizer, [waves[p.clip] for p in pairs], [p.prompt.text for p in pairs])
    return freeform_metrics(pairs, ta)
