"""deramos.runtime: score clips with an exported bundle (numpy + onnxruntime / TensorRT; no torch).

    from deramos.runtime import Scorer
    scorer = Scorer.load()                          # or Scorer.load("path/to/bundle"), Scorer.load("model.tar")
    scorer.score("clip.wav", "calm solo piano")     # Score(mi=3.42, ta=2.87, ...)

Names are imported on first use, so `import deramos.runtime` stays cheap (no numpy, no
onnxruntime until a Scorer is made).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Scorer": "scorer", "Score": "scorer", "Selection": "scorer", "ScoringError": "scorer",
    "Unscorable": "scorer", "SelfCheckFailed": "scorer", "Comparison": "compare",
    "Backend": "backends", "BackendUnavailable": "backends", "select_backend": "backends",
    "Bundle": "bundle", "BundleError": "bundle", "load_bundle": "bundle",
    "AudioError": "audio", "PromptError": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
