"""MI against severity, one degradation family at a time, on real music (issue 19, item 5).

The held-out report can only correlate MI with severity over the few clips a simulated system
happened to degrade with one family alone (3-22 per family). Here every clean clip climbs a
ladder per family instead: the clip itself, then the same clip with that family alone at each
severity, so each family is judged on every clip and nothing else changes between the rungs.

Per family: the mean over clips of the within-clip SRCC(MI, severity) with a bootstrap 95 %
interval over clips, the pooled SRCC over all rungs, the share of clips whose MI at full
severity is below their clean MI, and the mean MI and the raters' noise-free MI (latent_mi)
per rung. Families applied at render time (detune, timing jitter) need the score, not the
audio, and are not laddered.
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.synth.corpus import latent_mi
from ..data.synth.degrade import EFFECTS, apply_degradations
from ..runtime.audio import load_audio
from ..runtime.errors import EvaluationError
from ..runtime.metrics import spearman

LADDER_FAMILIES = tuple(sorted(EFFECTS))
SEVERITIES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Clip:
    name: str
    wave: np.ndarray
    prompt: str


def read_clean_clips(jsonl: Path, sample_rate: int, limit: int | None = None) -> list[Clip]:
    """Clips listed as {"path", "prompt"} lines (paths relative to the list); a bad line or an
    unreadable file is an EvaluationError naming it."""
    clips = []
    for number, line in enumerate(Path(jsonl).read_text().splitlines(), 1):
        if not line.strip() or (limit is not None and len(clips) >= limit):
            continue
        try:
            item = json.loads(line)
            path, prompt = Path(item["path"]), str(item["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise EvaluationError(f"{jsonl}:{number}: not a {{\"path\", \"prompt\"}} line ({err.__class__.__name__})") from None
        path = path if path.is_absolute() else Path(jsonl).parent / path
        clips.append(Clip(path.name, load_audio(path, sample_rate), prompt))
    if len(clips) < 2:
        raise EvaluationError(f"{jsonl}: {len(clips)} clip(s); a ladder report needs at least 2")
    return clips


def climb(clips: Sequence[Clip], family: str, severities: Sequence[float], sample_rate: int,
          score_mi: Callable[[list[np.ndarray], list[str]], np.ndarray], seed: int = 0) -> np.ndarray:
    """MI of every clip at every rung of one family's ladder -> [clips, 1 + len(severities)]
    (column 0: the clean clip). Each clip's degradations draw from their own seed, so a rung
    is the same audio whichever other clips are scored beside it (the seed is the clip's name)."""
    waves, prompts = [], []
    for clip in clips:
        waves.append(clip.wave)
        for level, severity in enumerate(severities):
            rng = np.random.default_rng([seed, zlib.crc32(clip.name.encode()), LADDER_FAMILIES.index(family), level])
            waves.append(apply_degradations(clip.wave, {family: severity}, rng, sample_rate))
        prompts += [clip.prompt] * (1 + len(severities))
    return np.asarray(score_mi(waves, prompts), dtype=np.float64).reshape(len(clips), 1 + len(severities))


def family_metrics(family: str, mi: np.ndarray, severities: Sequence[float], resamples: int = 2000,
                   seed: int = 0) -> dict:
    """The numbers of one family's ladders; mi is [clips, rungs] from climb."""
    levels = np.array([0.0, *severities])
    per_clip = np.array([spearman(row, levels) if np.ptp(row) > 0 else 0.0 for row in mi])
    rng = np.random.default_rng(seed)
    means = per_clip[rng.integers(0, len(per_clip), (resamples, len(per_clip)))].mean(axis=1)
    return {
        "clips": len(mi),
        "srcc_within_clip_mean": round(float(per_clip.mean()), 3),
        "srcc_within_clip_ci95": [round(float(q), 3) for q in np.quantile(means, [0.025, 0.975])],
        "srcc_pooled": round(spearman(mi.ravel(), np.tile(levels, len(mi))), 3),
        "falls_at_full_severity": round(float((mi[:, -1] < mi[:, 0]).mean()), 3),
        "mi_mean_per_rung": [round(float(v), 3) for v in mi.mean(axis=0)],
        "latent_mi_per_rung": [round(latent_mi({family: float(s)} if s else {}), 3) for s in levels],
    }


def check_ladder(families: Sequence[str], severities: Sequence[float]) -> None:
    """An EvaluationError unless `families` are laddered families and `severities` increase in (0, 1]."""
    unknown = sorted(set(families) - set(LADDER_FAMILIES))
    if not families:
        raise EvaluationError(f"no degradation family to ladder; choose from {', '.join(LADDER_FAMILIES)}")
    if unknown:
        raise EvaluationError(f"unknown or render-time degradation families {unknown}; laddered: {', '.join(LADDER_FAMILIES)}")
    if not severities or any(not 0.0 < s <= 1.0 for s in severities) or list(severities) != sorted(set(severities)):
        raise EvaluationError(f"severities {list(severities)}: need increasing values in (0, 1]")


def ladder_report(clips: Sequence[Clip], sample_rate: int, score_mi, families: Sequence[str] = LADDER_FAMILIES,
                  severities: Sequence[float] = SEVERITIES, seed: int = 0, progress=None) -> dict:
    """family -> family_metrics, over every clip's ladder of that family."""
    check_ladder(families, severities)
    out = {}
    for family in families:
        out[family] = family_metrics(family, climb(clips, family, severities, sample_rate, score_mi, seed), severities)
        if progress is not None:
            progress.update(1)
    return out


def markdown(results: dict[str, dict], severities: Sequence[float] = SEVERITIES) -> str:
    """One table per model: a row per family."""
    rungs = " / ".join(["clean", *(f"{s:g}" for s in severities)])
    lines = []
    for name, by_family in results.items():
        lines += [f"**{name}** — MI against severity, one family at a time ({next(iter(by_family.values()))['clips']} clips):", "",
                  f"| family | SRCC within clip (95 % CI) | pooled SRCC | MI falls at full severity | MI per rung ({rungs}) | raters' latent MI |",
                  "|---|---|---|---|---|---|"]
        for family, m in by_family.items():
            low, high = m["srcc_within_clip_ci95"]
            lines.append(f"| {family} | {m['srcc_within_clip_mean']:.2f} ({low:.2f} to {high:.2f}) | {m['srcc_pooled']:.2f} | "
                         f"{m['falls_at_full_severity']:.2f} | {' / '.join(f'{v:.2f}' for v in m['mi_mean_per_rung'])} | "
                         f"{' / '.join(f'{v:.2f}' for v in m['latent_mi_per_rung'])} |")
        lines.append("")
    return "\n".join(lines)
