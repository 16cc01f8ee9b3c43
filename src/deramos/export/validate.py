"""Every export is checked against the PyTorch model it came from (Optimum-style), by the one
comparator (runtime/compare.py): the PyTorch runner (export/torch_runner.py, float64 front-end)
is the reference, the runtime's own ONNX Runtime CPU backend the candidate, both behind a
Scorer, so what is compared is what will serve. The gate is the contract's FP32 tolerance
(runtime/contract.py's TOLERANCES): |ΔMI|, |ΔTA| <= 1e-3 end to end, and each encoder's
output cosine >= 0.9999 at every valid frame and token, the graphs run on identical inputs.
FP16 and INT8 are checked against these FP32 graphs by the build stage, by the same comparator.

The manifest keeps the result as `parity.fp32`: clips, tolerance, mi_max_abs, ta_max_abs,
audio_cosine_min, text_cosine_min, mi_srcc, ta_srcc, failures, passed.
"""
from __future__ import annotations

from ..calibration.samples import sample_set
from ..runtime.backends import OrtBackend
from ..runtime.compare import Comparison, compare_scorers
from ..runtime.contract import AUDIO_ENCODER, TEXT_ENCODER
from ..runtime.scorer import Scorer
from .torch_runner import TorchBackend


def fp32_parity(model, bundle, clips: int, seed: int) -> dict:
    """The bundle's FP32 graphs against `model` on `clips` rendered clips: the parity record."""
    return parity_record(check_against_pytorch(model, bundle, clips, seed))


def check_against_pytorch(model, bundle, clips: int, seed: int) -> Comparison:
    cfg = model.cfg
    # Every clip long enough for the model's first frame (musicnn: 1.5 s), which the Scorer asks for.
    shortest = max(1.0, 1.1 * bundle.samples_per_frame / bundle.sample_rate)
    samples = sample_set(clips, cfg.audio.sample_rate, cfg.audio.window_seconds, seed=seed, min_seconds=shortest)
    with Scorer(bundle, TorchBackend(model)) as reference, Scorer(bundle, OrtBackend(bundle, "fp32")) as candidate:
        return compare_scorers(reference, candidate, samples.waves, samples.prompts, precision="fp32",
                               source=f"{clips} rendered clips")


def parity_record(comparison: Comparison) -> dict:
    mi, ta = comparison.scores["MI"], comparison.scores["TA"]
    return {"clips": comparison.clips, "tolerance": comparison.tolerance.to_dict(),
            "mi_max_abs": mi.max_abs, "ta_max_abs": ta.max_abs,
            "audio_cosine_min": comparison.graphs[AUDIO_ENCODER.name]["min_cosine"],
            "text_cosine_min": comparison.graphs[TEXT_ENCODER.name]["min_cosine"],
            "mi_srcc": mi.srcc, "ta_srcc": ta.srcc, "failures": comparison.failures, "passed": comparison.passed}


def format_report(precision: str, report: dict) -> str:
    verdict = "PASS" if report["passed"] else "FAIL"
    line = (f"{precision:5s} {verdict}  clips {report['clips']}  max|ΔMI| {report['mi_max_abs']:.2e}  "
            f"max|ΔTA| {report['ta_max_abs']:.2e}  SRCC MI {report['mi_srcc']:.4f} TA {report['ta_srcc']:.4f}  "
            f"cos audio {report['audio_cosine_min']:.6f} text {report['text_cosine_min']:.6f}")
    return "\n".join([line] + [f"      {f}" for f in report["failures"]])
