"""The free-form evaluation: hand-written prompts (tests/data/freeform) against clips whose
attributes are known.

The prompts were written by hand, apart from the training generator (realmusic/phrasing.py),
each annotated with what it asserts (attributes.check_assertion); the unrelated ones are about
things no clip holds (speech, rain, silence, bagpipes, a shopping list). Per clip, `draw_pairs`
picks prompts whose every assertion holds (matched), prompts with exactly one asserted kind
wrong (one per kind where the set has one), prompts with any asserted kind wrong (mismatched),
and unrelated ones. The raters' TA for a prompt is `asserted_ta` of what holds (1 for an
unrelated prompt). `freeform_metrics` turns the model's TA for those pairs into:
- matched vs mismatched AUC (all pairs) and paired wins per attribute kind (a matched prompt
  asserting the kind vs one with only that kind wrong, same clip), with 95 % intervals;
- the share of unrelated (clip, prompt) pairs with TA <= 2.0, and of clips whose own matched
  prompt beats every unrelated prompt drawn for it;
- utterance SRCC of TA against the raters' TA over every pair drawn.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ...runtime.metrics import auc, wilson
from .attributes import PROMPT_KINDS, RealAttributes, asserted_ta, assertion_matches, check_assertion

PROMPT_SET_DIR = Path(__file__).resolve().parents[4] / "tests" / "data" / "freeform"
UNRELATED_TA_LIMIT = 2.0


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    asserts: dict          # kind -> canonical value; {} for an unrelated prompt
    category: str = ""     # unrelated prompts: speech, environment, ...


@dataclass(frozen=True)
class Pair:
    clip: int              # index into the clips
    prompt: Prompt
    role: str              # matched | wrong:<kind> | mismatched | unrelated
    truth: float           # the raters' latent TA


def load_prompt_set(folder: Path = PROMPT_SET_DIR) -> tuple[list[Prompt], list[Prompt]]:
    """(described prompts, unrelated prompts) from prompts.jsonl and unrelated.jsonl; ValueError
    naming the file, line and cause for a bad line."""
    def read(name, make):
        path = Path(folder) / name
        out = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                out.append(make(json.loads(line)))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: {error}") from None
        return out

    described = read("prompts.jsonl", lambda r: Prompt(r["id"], r["text"], check_assertion(r["asserts"])))
    unrelated = read("unrelated.jsonl", lambda r: Prompt(r["id"], r["text"], {}, r["category"]))
    return described, unrelated


def normalised(text: str) -> str:
    """Lower case, letters, digits and single spaces: how two prompts are compared."""
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


@functools.lru_cache(maxsize=1)
def held_out_texts(folder: Path = PROMPT_SET_DIR) -> frozenset[str]:
    """Every prompt of the free-form set, normalised, for training to avoid; empty where the set
    is not there (an installed package: no corpus is built from it)."""
    if not (Path(folder) / "prompts.jsonl").is_file():
        return frozenset()
    described, unrelated = load_prompt_set(folder)
    return frozenset(normalised(p.text) for p in [*described, *unrelated])


def _kinds(asserts: dict) -> set[str]:
    return {"tempo" if k == "tempo_bpm" else k for k in asserts}


def draw_pairs(heard: list[RealAttributes], described: list[Prompt], unrelated: list[Prompt],
               rng: np.random.Generator, matched_per_clip: int = 3, mismatched_per_clip: int = 3,
               unrelated_per_clip: int = 3) -> list[Pair]:
    """The (clip, prompt) pairs of the evaluation, drawn the same way for every model."""
    pairs = []
    for index, attributes in enumerate(heard):
        verdicts = [assertion_matches(p.asserts, attributes) for p in described]
        matched = [p for p, v in zip(described, verdicts) if all(v.values())]
        mismatched = [(p, v) for p, v in zip(described, verdicts) if not all(v.values())]
        pairs += [Pair(index, p, "matched", asserted_ta(assertion_matches(p.asserts, attributes)))
                  for p in _pick(matched, matched_per_clip, rng)]
        pairs += [Pair(index, p, "mismatched", asserted_ta(v)) for p, v in _pick(mismatched, mismatched_per_clip, rng)]
        for kind in PROMPT_KINDS:
            wrong_only_here = [(p, v) for p, v in mismatched if [k for k, ok in v.items() if not ok] == [kind]]
            pairs += [Pair(index, p, f"wrong:{kind}", asserted_ta(v)) for p, v in _pick(wrong_only_here, 1, rng)]
        pairs += [Pair(index, p, "unrelated", 1.0) for p in _pick(unrelated, unrelated_per_clip, rng)]
    return pairs


def _pick(items: list, count: int, rng: np.random.Generator) -> list:
    if len(items) <= count:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=count, replace=False))]


def rate(wins: int, n: int) -> dict:
    if n == 0:
        return {"wins": 0, "pairs": 0, "rate": None, "ci95": None}
    low, high = wilson(wins, n)
    return {"wins": wins, "pairs": n, "rate": round(wins / n, 3), "ci95": [round(low, 3), round(high, 3)]}


def freeform_metrics(pairs: list[Pair], ta: np.ndarray) -> dict:
    """Every number of the free-form evaluation from the model's TA for each pair."""
    ta = np.asarray(ta, dtype=np.float64)
    roles = np.array([p.role for p in pairs])
    clips = np.array([p.clip for p in pairs])
    matched, mismatched, unrelated = roles == "matched", roles == "mismatched", roles == "unrelated"
    per_kind = {}
    for kind in PROMPT_KINDS:
        wins = n = 0
        for i in np.flatnonzero(roles == f"wrong:{kind}"):
            own = [j for j in np.flatnonzero(matched & (clips == clips[i])) if kind in _kinds(pairs[j].prompt.asserts)]
            if own:
                n += 1
                wins += int(ta[own[0]] > ta[i])
        per_kind[kind] = rate(wins, n)
    beats_all = []
    for clip in np.unique(clips):
        own, others = ta[matched & (clips == clip)], ta[unrelated & (clips == clip)]
        if len(own) and len(others):
            beats_all.append(bool(own.max() > others.max()))
    truth = np.array([p.truth for p in pairs])
    described = ~unrelated
    return {
        "clips": int(len(np.unique(clips))), "pairs": len(pairs),
        "matched_vs_mismatched_auc": round(auc(ta[matched], ta[mismatched]), 3),
        "paired_wins_one_kind_wrong": per_kind,
        "unrelated_ta_at_most_2": rate(int((ta[unrelated] <= UNRELATED_TA_LIMIT).sum()), int(unrelated.sum())),
        "own_prompt_beats_every_unrelated": rate(sum(beats_all), len(beats_all)),
        "ta_means": {"matched": round(float(ta[matched].mean()), 3), "mismatched": round(float(ta[mismatched].mean()), 3),
                     "unrelated": round(float(ta[unrelated].mean()), 3)},
        "utterance_srcc_ta": round(float(spearmanr(ta, truth).statistic), 3),
        "utterance_srcc_ta_described_only": round(float(spearmanr(ta[described], truth[described]).statistic), 3),
    }


def markdown(results: dict) -> str:
    """One table row per model, then paired wins per kind."""
    lines = ["| model | clips | pairs | AUC matched/mismatched | unrelated TA <= 2 | own beats every unrelated | "
             "utt SRCC TA | TA matched / mismatched / unrelated |", "|" + "---|" * 8]
    for name, r in results.items():
        m = r["ta_means"]
        lines.append(f"| {name} | {r['clips']} | {r['pairs']} | {r['matched_vs_mismatched_auc']:.3f} | "
                     f"{r['unrelated_ta_at_most_2']['rate']:.2f} | {r['own_prompt_beats_every_unrelated']['rate']:.2f} | "
                     f"{r['utterance_srcc_ta']:.3f} | {m['matched']:.2f} / {m['mismatched']:.2f} / {m['unrelated']:.2f} |")
    lines += ["", "Paired wins, one asserted kind wrong (rate, pairs):", "",
              "| model | " + " | ".join(PROMPT_KINDS) + " |", "|" + "---|" * (len(PROMPT_KINDS) + 1)]
    for name, r in results.items():
        one = r["paired_wins_one_kind_wrong"]
        lines.append(f"| {name} | " + " | ".join(
            f"{one[k]['rate']:.2f} ({one[k]['pairs']})" if one[k]["pairs"] else "—" for k in PROMPT_KINDS) + " |")
    return "\n".join(lines) + "\n"

