"""Every export is checked against the PyTorch model it came from (Optimum-style).

The reference is the eager model with its torch.stft front-end computed in float64, i.e.
the exact model and not the DFT-basis convolution that went into the graph, so the front-end
is checked too. (In float32, torch.stft's own rounding is larger than the graph's: up to
0.05 vs 0.009 normalised log-mel units on quiet, low-passed clips — a reference that noisy
would fail a correct graph.) The candidate is the runtime's own ONNX Runtime CPU backend:
audio_encoder -> heads <- text_encoder.

Tolerances (MI and TA are on the 1-5 scale):
    fp32: |ΔMI|, |ΔTA| <= 1e-3; encoder outputs cosine >= 0.9999 (per clip / per prompt)
FP16 and INT8 are checked against these FP32 graphs by the build stage (runtime/compare.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..calibration.samples import SampleSet, batches
from ..runtime.audio import pad_waves
from ..runtime.metrics import spearman
from ..runtime.text import PromptTokenizer

TOLERANCES = {
    "fp32": {"score_abs": 1e-3, "encoder_cosine": 0.9999},
}


class ValidationError(RuntimeError):
    pass


@dataclass
class Outputs:
    mi: np.ndarray
    ta: np.ndarray
    frames: list[np.ndarray]     # per clip, valid frames only
    tokens: list[np.ndarray]     # per clip, real tokens only


def _batch_inputs(samples: SampleSet, index: list[int], tokenizer: PromptTokenizer):
    wave, lengths = pad_waves([samples.waves[i] for i in index])
    ids, mask = tokenizer.encode([samples.prompts[i] for i in index])
    return wave, lengths, ids, mask


def _split_valid(frames, mask, rows):
    return [frames[r][mask[r].astype(bool)] for r in range(rows)]


@torch.no_grad()
def torch_outputs(model, samples: SampleSet, tokenizer: PromptTokenizer) -> Outputs:
    model.eval()
    frontend = model.audio_encoder.frontend
    frontend.float64, dft = True, frontend.use_dft_conv
    frontend.use_dft_conv = False
    try:
        return _torch_outputs(model, samples, tokenizer)
    finally:
        frontend.float64, frontend.use_dft_conv = False, dft


def _torch_outputs(model, samples: SampleSet, tokenizer: PromptTokenizer) -> Outputs:
    parts = []
    for index in batches(len(samples.waves)):
        wave, lengths, ids, mask = _batch_inputs(samples, index, tokenizer)
        wave_t, lengths_t = torch.from_numpy(wave), torch.from_numpy(lengths)
        frames, frame_mask = model.audio_encoder(wave_t, lengths_t)
        tokens = model.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        out = model.heads(frames, frame_mask, tokens, torch.from_numpy(mask).bool())
        parts.append((out["mi"].numpy(), out["ta"].numpy(),
                      _split_valid(frames.numpy(), frame_mask.numpy(), len(index)),
                      _split_valid(tokens.numpy(), mask, len(index))))
    return _concat(parts)


def backend_outputs(backend, samples: SampleSet, tokenizer: PromptTokenizer) -> Outputs:
    """The same batches through a runtime backend (deramos.runtime.backends): what will serve."""
    parts = []
    for index in batches(len(samples.waves)):
        wave, lengths, ids, mask = _batch_inputs(samples, index, tokenizer)
        audio = backend.run("audio_encoder", {"waveform": wave, "lengths": lengths})
        tokens = backend.run("text_encoder", {"input_ids": ids, "attention_mask": mask})["tokens"]
        out = backend.run("heads", {"frames": audio["frames"], "frame_mask": audio["frame_mask"],
                                    "tokens": tokens, "token_mask": mask})
        parts.append((out["mi"], out["ta"], _split_valid(audio["frames"], audio["frame_mask"], len(index)),
                      _split_valid(tokens, mask, len(index))))
    return _concat(parts)


def _concat(parts) -> Outputs:
    return Outputs(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   [f for p in parts for f in p[2]], [t for p in parts for t in p[3]])


def _min_cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    worst = 1.0
    for x, y in zip(a, b):
        x, y = x.ravel().astype(np.float64), y.ravel().astype(np.float64)
        denom = np.linalg.norm(x) * np.linalg.norm(y)
        worst = min(worst, float(x @ y / denom) if denom > 0 else float(np.allclose(x, y)))
    return worst


def compare(reference: Outputs, candidate: Outputs, precision: str) -> dict:
    """A report with the measured differences, the tolerances and `passed`."""
    tol = TOLERANCES[precision]
    report = {"clips": int(len(reference.mi)), "tolerance": tol,
              "mi_max_abs": float(np.max(np.abs(reference.mi - candidate.mi))),
              "ta_max_abs": float(np.max(np.abs(reference.ta - candidate.ta))),
              "audio_cosine_min": _min_cosine(reference.frames, candidate.frames),
              "text_cosine_min": _min_cosine(reference.tokens, candidate.tokens),
              "mi_srcc": spearman(candidate.mi, reference.mi),
              "ta_srcc": spearman(candidate.ta, reference.ta)}
    failures = []
    for score in ("mi", "ta"):
        if report[f"{score}_max_abs"] > tol["score_abs"]:
            failures.append(f"heads output {score}: max |Δ| {report[f'{score}_max_abs']:.2e} > {tol['score_abs']:g}")
        if "srcc" in tol and not report[f"{score}_srcc"] >= tol["srcc"]:
            failures.append(f"heads output {score}: ranking SRCC {report[f'{score}_srcc']:.4f} < {tol['srcc']}")
    if "encoder_cosine" in tol:
        for graph, key, output in (("audio_encoder", "audio_cosine_min", "frames"), ("text_encoder", "text_cosine_min", "tokens")):
            if report[key] < tol["encoder_cosine"]:
                failures.append(f"{graph} output {output}: min cosine {report[key]:.6f} < {tol['encoder_cosine']}")
    report["failures"] = failures
    report["passed"] = not failures
    return report


def format_report(precision: str, report: dict) -> str:
    verdict = "PASS" if report["passed"] else "FAIL"
    line = (f"{precision:5s} {verdict}  clips {report['clips']}  max|ΔMI| {report['mi_max_abs']:.2e}  "
            f"max|ΔTA| {report['ta_max_abs']:.2e}  SRCC MI {report['mi_srcc']:.4f} TA {report['ta_srcc']:.4f}  "
            f"cos audio {report['audio_cosine_min']:.6f} text {report['text_cosine_min']:.6f}")
    return "\n".join([line] + [f"      {f}" for f in report["failures"]])
