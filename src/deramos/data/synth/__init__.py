"""deramos-synth: a synthetic text-to-music MOS corpus in exactly the MusicEval layout.

``generate_corpus`` writes the corpus; ``render_clip``, ``ClipAttributes`` and
``prompt_for`` render single clips and describe them, e.g. to pair a clip with a
matching and a mismatching prompt (see ``change_attribute``).
"""

from .corpus import ARCHETYPES, SystemProfile, generate_corpus, latent_mi, latent_ta
from .degrade import FAMILIES, apply_degradations
from .music import (
    PROMPT_KINDS,
    VOCABULARY,
    ClipAttributes,
    attribute_matches,
    change_attribute,
    compose,
    prompt_for,
    random_attributes,
    render_clip,
)

__all__ = [
    "ARCHETYPES",
    "FAMILIES",
    "PROMPT_KINDS",
    "VOCABULARY",
    "ClipAttributes",
    "SystemProfile",
    "apply_degradations",
    "attribute_matches",
    "change_attribute",
    "compose",
    "generate_corpus",
    "latent_mi",
    "latent_ta",
    "prompt_for",
    "random_attributes",
    "render_clip",
]
