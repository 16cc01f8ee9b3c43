"""The accuracy cost of FP16 and INT8: their scores against FP32 on a held-out set.

Both sides run through the runtime's own backends (runtime/compare.py), so the report isolates
the precision. At least MIN_CLIPS clips (a dev split that is smaller is topped up with rendered
clips), reported with a bootstrap interval for the rank agreement. The gates are
runtime/contract.py's TOLERANCES: for INT8, MAE <= 0.15, MAE <= 0.2 of the spread of the FP32
scores, and SRCC >= 0.97 where the FP32 scores spread enough for a ranking to mean something.
"""
from __future__ import annotations

from ..runtime.backends import OrtBackend, open_backend
from ..runtime.bundle import Bundle
from ..runtime.compare import Comparison, compare_scorers
from ..runtime.scorer import Scorer
from .dataset import ClipSet, held_out_set

MIN_CLIPS = 64


def drift_set(spec: str | None, bundle: Bundle, clips: int = MIN_CLIPS, seed: int = 4242) -> ClipSet:
    return held_out_set(spec, bundle.sample_rate, bundle.window_seconds, max(clips, MIN_CLIPS), seed)


def measure_drift(bundle: Bundle, precision: str, held: ClipSet, threads: int | None = None,
                  backend: str = "onnxruntime-cpu") -> Comparison:
    """`precision` on `backend` against FP32 on ONNX Runtime's CPU backend."""
    reference = Scorer(bundle, OrtBackend(bundle, "fp32", threads=threads))
    candidate = Scorer(bundle, open_backend(backend, bundle, precision, threads))
    with reference, candidate:
        return compare_scorers(reference, candidate, held.waves, held.prompts, precision=precision,
                               source=held.source, systems=held.systems)
