"""The accuracy cost of INT8: INT8 scores against FP32 scores on a held-out set.

Both sides run in ONNX Runtime, so the report isolates quantisation. Reported for MI and TA:
MAE and max |Δ| of the scores, SRCC and KTAU of the rankings, at utterance and system level
(a system's score = the mean of its clips'). Targets: SRCC >= 0.97 and MAE <= 0.15.
"""
from __future__ import annotations

import numpy as np

from ..metrics import kendall_tau, spearman, system_scores
from ..runtime.bundle import GRAPHS
from .dataset import held_out_set

TARGETS = {"srcc": 0.97, "mae": 0.15}


def _compare(fp32: np.ndarray, int8: np.ndarray) -> dict:
    diff = np.abs(fp32 - int8)
    return {"mae": float(diff.mean()), "max_abs": float(diff.max()),
            "srcc": spearman(int8, fp32), "ktau": kendall_tau(int8, fp32)}


def drift_report(fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray], systems: list[str] | None) -> dict:
    report = {"utterance": {k: _compare(fp32[k], int8[k]) for k in ("MI", "TA")}, "system": {}}
    if systems:
        for k in ("MI", "TA"):
            a, b = system_scores(systems, fp32[k]), system_scores(systems, int8[k])
            names = sorted(a)
            report["system"][k] = _compare(np.array([a[s] for s in names]), np.array([b[s] for s in names]))
    failures = [f"{k}: SRCC {r['srcc']:.4f} < {TARGETS['srcc']}" for k, r in report["utterance"].items()
                if not r["srcc"] >= TARGETS["srcc"]]
    failures += [f"{k}: MAE {r['mae']:.4f} > {TARGETS['mae']}" for k, r in report["utterance"].items()
                 if r["mae"] > TARGETS["mae"]]
    report.update(targets=TARGETS, failures=failures, passed=not failures)
    return report


def format_drift(report: dict) -> str:
    lines = [f"INT8 drift vs FP32 on {report.get('clips', '?')} held-out clips ({report.get('source', '')})",
             "level      score    MAE   max|Δ|    SRCC    KTAU"]
    for level in ("utterance", "system"):
        for k, r in report[level].items():
            lines.append(f"{level:10s} {k:5s} {r['mae']:6.3f}  {r['max_abs']:6.3f}  {r['srcc']:6.4f}  {r['ktau']:6.4f}")
    lines.append("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    return "\n".join(lines)


def measure_drift(model, out, files, options, tokenizer, say) -> dict:
    from ..export.validate import onnx_outputs, ort_sessions

    cfg = model.cfg
    held = held_out_set(options.calib, cfg.audio.sample_rate, cfg.audio.window_seconds,
                        options.validate_clips, seed=options.seed + 4242)
    scores = {}
    for precision in ("fp32", "int8"):
        sessions = ort_sessions({g: out / files[g][precision][0] for g in GRAPHS})
        outputs = onnx_outputs(sessions, held, tokenizer)
        scores[precision] = {"MI": outputs.mi, "TA": outputs.ta}
    report = drift_report(scores["fp32"], scores["int8"], held.systems)
    report.update(clips=len(held.waves), source=held.source)
    say(format_drift(report))
    return report
