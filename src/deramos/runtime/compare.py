"""One comparator for every artefact: a candidate (FP16, INT8, a TensorRT engine) against FP32.

Both sides run through the runtime's own backends (or, for a self-check, the candidate runs
and the reference is the FP32 output stored with the bundle's probes), so what is compared is
what will serve. Reported per graph (encoder frames and tokens, heads on identical inputs)
and end to end (MI and TA): max |Δ|, MAE, the spread of the reference scores, the spread of the
differences relative to it, and rank agreement (SRCC with a bootstrap 95% interval, Kendall's tau).

The gates are the contract's TOLERANCES (runtime/contract.py), one per precision; FP32's
is also the export's check against PyTorch, whose runner (deramos.export.torch_runner) is one
more backend here.

Why relative to the spread: a model whose scores hardly vary (an untrained one, say) reorders
its clips under any rounding at all, so a rank gate alone measures noise there. `rel_noise` =
std(candidate - reference) / std(reference) says how large the drift that can reorder clips is
against the differences the model makes between clips (a constant offset reorders nothing, so
it is left to the absolute gates); for Gaussian drift SRCC is about 1/sqrt(1 + rel_noise^2), so
0.1 and 0.2 stand for SRCC 0.995 and 0.98. The SRCC gate itself applies only when the reference
scores spread by at least MIN_SPREAD (std, 1-5 scale).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .audio import pad_waves
from .contract import AUDIO_ENCODER, GRAPHS, HEADS, SPECS, TEXT_ENCODER, TOLERANCES, Tolerance
from .metrics import kendall_tau, spearman, system_scores

MIN_SPREAD = 0.05
BOOTSTRAP_ROUNDS = 1000
SCORES = ("MI", "TA")


@dataclass
class Agreement:
    """One score (MI or TA) of a candidate against the reference."""

    n: int
    max_abs: float
    mae: float
    spread: float
    rel_noise: float
    srcc: float
    srcc_ci: tuple[float, float]
    ktau: float

    def failures(self, label: str, tol: Tolerance) -> list[str]:
        out = []
        if tol.max_abs is not None and not self.max_abs <= tol.max_abs:
            out.append(f"{label}: max |Δ| {self.max_abs:.4g} > {tol.max_abs:.4g}")
        if tol.mae is not None and not self.mae <= tol.mae:
            out.append(f"{label}: MAE {self.mae:.4g} > {tol.mae:.4g}")
        if tol.rel_noise is not None and not self.rel_noise <= tol.rel_noise:
            out.append(f"{label}: drift std is {self.rel_noise:.3f} of the score spread {self.spread:.4g} "
                       f"(> {tol.rel_noise:.4g})")
        if tol.srcc is not None and self.spread >= MIN_SPREAD and not self.srcc >= tol.srcc:
            out.append(f"{label}: SRCC {self.srcc:.4f} < {tol.srcc:.4g} "
                       f"(95% CI {self.srcc_ci[0]:.3f}-{self.srcc_ci[1]:.3f}, {self.n} clips)")
        return out


def agreement(reference, candidate, seed: int = 0) -> Agreement:
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 1 or len(ref) == 0:
        raise ValueError(f"cannot compare scores of shapes {ref.shape} and {cand.shape}")
    diff = np.abs(ref - cand)
    spread, noise = float(ref.std()), float((cand - ref).std())
    return Agreement(n=len(ref), max_abs=float(diff.max()), mae=float(diff.mean()), spread=spread,
                     rel_noise=noise / spread if spread > 0 else (0.0 if noise == 0 else float("inf")),
                     srcc=spearman(cand, ref), srcc_ci=srcc_interval(ref, cand, seed), ktau=kendall_tau(cand, ref))


def srcc_interval(reference: np.ndarray, candidate: np.ndarray, seed: int = 0,
                  rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the SRCC (clips resampled with replacement)."""
    n = len(reference)
    if n < 3:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, n, n)
        value = spearman(candidate[pick], reference[pick])
        if np.isfinite(value):
            values.append(value)
    if not values:
        return (float("nan"), float("nan"))
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


@dataclass
class Comparison:
    """A candidate against the reference, end to end and (when both ran here) per graph."""

    candidate: str
    reference: str
    precision: str
    source: str
    scores: dict[str, Agreement]
    systems: dict[str, Agreement] = field(default_factory=dict)
    graphs: dict[str, dict[str, float]] = field(default_factory=dict)
    tolerance: Tolerance = field(default_factory=Tolerance)
    errors: list[str] = field(default_factory=list)     # items the candidate could not score
    problems: list[str] = field(default_factory=list)   # failures found before comparing (non-finite outputs)

    @property
    def clips(self) -> int:
        return next(iter(self.scores.values())).n if self.scores else 0

    @property
    def failures(self) -> list[str]:
        out = [f for label, a in self.scores.items() for f in a.failures(label, self.tolerance)]
        return list(self.problems) + out + self._graph_failures() + [f"candidate failed on {e}" for e in self.errors]

    def _graph_failures(self) -> list[str]:
        """The encoders' outputs, position by position, where the graphs were compared."""
        wanted = self.tolerance.min_cosine
        if wanted is None:
            return []
        return [f"{graph} output {SPECS[graph].output_names[0]}: min cosine {stats['min_cosine']:.6f} < {wanted:g}"
                for graph, stats in self.graphs.items() if "min_cosine" in stats and not stats["min_cosine"] >= wanted]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"candidate": self.candidate, "reference": self.reference, "precision": self.precision,
                "source": self.source, "clips": self.clips, "min_spread_for_srcc": MIN_SPREAD,
                "utterance": {k: asdict(a) for k, a in self.scores.items()},
                "system": {k: asdict(a) for k, a in self.systems.items()},
                "graphs": self.graphs, "tolerance": self.tolerance.to_dict(), "errors": self.errors,
                "failures": self.failures, "passed": self.passed}

    def format(self) -> str:
        lines = [f"{self.candidate} vs {self.reference} on {self.clips} clips ({self.source})",
                 "level      score   max|Δ|     MAE  spread  noise/spread  SRCC (95% CI)      KTAU"]
        for level, table in (("utterance", self.scores), ("system", self.systems)):
            for label, a in table.items():
                lines.append(f"{level:10s} {label:5s} {a.max_abs:8.5f} {a.mae:7.5f} {a.spread:7.4f} {a.rel_noise:12.3f}  "
                             f"{a.srcc:6.4f} ({a.srcc_ci[0]:.3f}-{a.srcc_ci[1]:.3f})  {a.ktau:6.4f}")
        for graph, stats in self.graphs.items():
            lines.append(f"graph {graph:14s} " + "  ".join(f"{k} {v:.4g}" for k, v in stats.items()))
        lines.append("PASS" if self.passed else "FAIL: " + "; ".join(self.failures))
        return "\n".join(lines)


def compare_scores(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], *, precision: str,
                   candidate_name: str, reference_name: str, source: str, systems: list[str] | None = None,
                   tolerance: Tolerance | None = None, errors: list[str] | None = None) -> Comparison:
    """MI/TA arrays of both sides (same clips, same order) -> a Comparison."""
    scores = {k: agreement(reference[k], candidate[k]) for k in SCORES}
    return Comparison(candidate_name, reference_name, precision, source, scores,
                      systems=_system_agreement(reference, candidate, systems),
                      tolerance=tolerance or TOLERANCES.get(precision, Tolerance()), errors=list(errors or []))


def _system_agreement(reference, candidate, systems) -> dict[str, Agreement]:
    """System-level rows only where they mean something: >= 3 systems of >= 2 clips each."""
    if not systems:
        return {}
    _, counts = np.unique(np.asarray(systems), return_counts=True)
    if len(counts) < 3 or counts.min() < 2:
        return {}
    out = {}
    for k in SCORES:
        a, b = system_scores(systems, reference[k]), system_scores(systems, candidate[k])
        names = sorted(a)
        out[k] = agreement([a[s] for s in names], [b[s] for s in names])
    return out


def compare_scorers(reference, candidate, waves: list[np.ndarray], prompts: list[str], *, precision: str,
                    source: str, systems: list[str] | None = None, sample_rate: int | None = None,
                    tolerance: Tolerance | None = None) -> Comparison:
    """Two Scorers over the same clips: end to end, then each graph on identical inputs."""
    rate = sample_rate or reference.sample_rate
    ref = reference.score_batch(waves, prompts, sample_rate=rate)
    cand = candidate.score_batch(waves, prompts, sample_rate=rate)
    keep = [i for i, (r, c) in enumerate(zip(ref, cand)) if r.ok and c.ok]
    errors = [c.error for r, c in zip(ref, cand) if r.ok and not c.ok]
    if not keep:
        raise ValueError(f"nothing to compare: no clip of {source} was scored by both sides")
    pick = lambda scores, attr: np.array([getattr(scores[i], attr) for i in keep])   # noqa: E731
    comparison = compare_scores({"MI": pick(ref, "mi"), "TA": pick(ref, "ta")},
                                {"MI": pick(cand, "mi"), "TA": pick(cand, "ta")}, precision=precision,
                                candidate_name=_describe(candidate), reference_name=_describe(reference),
                                source=source, systems=[systems[i] for i in keep] if systems else None,
                                tolerance=tolerance, errors=errors)
    usable = [waves[i] for i in keep if isinstance(waves[i], np.ndarray) and rate == reference.sample_rate]
    if usable:
        comparison.graphs = compare_graphs(reference, candidate, usable, [prompts[i] for i in keep][:len(usable)])
    return comparison


def _describe(scorer) -> str:
    return scorer.backend.describe()


def compare_graphs(reference, candidate, waves: list[np.ndarray], prompts: list[str], batch: int | None = None) -> dict:
    """Each graph of both sides on identical inputs (the heads get the reference's encodings), `batch`
    windows at a time: by default the reference Scorer's audio batch (2 on a CPU), so the two sides'
    sessions hold the activations of that many windows each, as they do when they score."""
    batch = batch or reference.audio_batch
    window = reference.bundle.window_samples
    stats: dict[str, list] = {g: [] for g in GRAPHS}
    for start in range(0, len(waves), batch):
        audio = AUDIO_ENCODER.feeds(*pad_waves([np.asarray(w, np.float32)[:window] for w in waves[start:start + batch]]))
        ids, mask = reference.tokenizer.encode(prompts[start:start + batch])
        text = TEXT_ENCODER.feeds(ids, mask)
        frames, frame_mask = _outputs(reference, AUDIO_ENCODER, audio)
        (tokens,) = _outputs(reference, TEXT_ENCODER, text)
        stats[AUDIO_ENCODER.name].append(_diff(frames, _outputs(candidate, AUDIO_ENCODER, audio)[0],
                                               np.asarray(frame_mask, bool)))
        stats[TEXT_ENCODER.name].append(_diff(tokens, _outputs(candidate, TEXT_ENCODER, text)[0], mask.astype(bool)))
        heads = HEADS.feeds(frames, frame_mask, tokens, mask)
        ours, theirs = _outputs(reference, HEADS, heads), _outputs(candidate, HEADS, heads)
        stats[HEADS.name].append(np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                                                 for a, b in zip(ours[:2], theirs[:2])]))   # the scores, MI and TA
    return {graph: _summary(parts) for graph, parts in stats.items()}


def _outputs(scorer, spec, feeds) -> tuple:
    return spec.outputs_of(scorer.backend.run(spec.name, feeds))


def _diff(reference, candidate, mask) -> np.ndarray:
    """|Δ| over the valid positions, plus each position's cosine similarity (appended as a pair)."""
    ref, cand = np.asarray(reference, np.float64)[mask], np.asarray(candidate, np.float64)[mask]
    cosine = (ref * cand).sum(-1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1), 1e-12)
    return np.stack([np.abs(ref - cand).max(-1), np.abs(ref - cand).mean(-1), cosine], axis=-1)


def _summary(parts: list[np.ndarray]) -> dict[str, float]:
    values = np.concatenate(parts)
    if values.ndim == 1:      # heads: |Δ| of the scores
        return {"max_abs": float(values.max()), "mae": float(values.mean())}
    return {"max_abs": float(values[:, 0].max()), "mae": float(values[:, 1].mean()), "min_cosine": float(values[:, 2].min())}
