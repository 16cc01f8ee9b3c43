"""Counterfactual prompts: the same clip described slightly wrongly, with the TA it would get.

A synthetic corpus knows what each clip really sounds like (`rendered_attributes` in
synth_meta.jsonl), so any other prompt can be scored the way the simulated raters would:
change one or two attribute kinds of the clip's own prompt, and move the clip's rated TA by
the change in latent TA. Trained on such pairs, the TA branch cannot get by on audio cues
alone (which system made a clip); it has to compare what the prompt asks for with what it hears.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .corpus import latent_ta
from .music import PROMPT_KINDS, ClipAttributes, attribute_matches, change_attribute, prompt_for

META_FILE = "synth_meta.jsonl"


def counterfactual_prompts(record: dict, count: int, rng: np.random.Generator) -> list[tuple[str, float]]:
    """`count` (prompt, TA) pairs for one synth_meta record, each prompt differing from the
    clip's own in one or two attribute kinds."""
    asked = ClipAttributes.from_dict(record["prompt_attributes"])
    heard = ClipAttributes.from_dict(record["rendered_attributes"])
    return [counterfactual(asked, heard, record["ta"], rng)[1:] for _ in range(count)]


def counterfactual(asked: ClipAttributes, heard: ClipAttributes, rated_ta: float,
                   rng: np.random.Generator) -> tuple[ClipAttributes, str, float]:
    """One prompt asking for something else in one or two kinds -> (its attributes, text, TA)."""
    kinds = rng.choice(PROMPT_KINDS, size=int(rng.integers(1, 3)), replace=False)
    other = asked
    for kind in kinds:
        other = change_attribute(other, str(kind), rng)
    shift = latent_ta(attribute_matches(other, heard)) - latent_ta(attribute_matches(asked, heard))
    return other, prompt_for(other, rng), round(float(np.clip(rated_ta + shift, 1.0, 5.0)), 3)


def load_counterfactuals(root: str | Path, count: int, seed: int) -> dict[str, list[tuple[str, float]]]:
    """wav name -> its counterfactual (prompt, TA) pairs, for every clip of a synthetic corpus.
    Deterministic for (corpus, count, seed)."""
    path = Path(root) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; counterfactual prompts need a corpus made by deramos-synth or deramos-realmusic")
    table = {}
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        record = json.loads(line)
        if "counterfactuals" in record:   # written with the corpus (deramos-realmusic)
            table[record["wav"]] = [(text, float(ta)) for text, ta in record["counterfactuals"][:count]]
            continue
        table[record["wav"]] = counterfactual_prompts(record, count, np.random.default_rng([seed, index]))
    return table
