"""INT8 precision search: when an INT8 graph misses its drift target, keep the layers that cost
the most ranking agreement in FP32 until it meets it (the idea of Polygraphy's `debug precision`
and ModelOpt's auto-quantize, judged here by the ranking of whole-model scores).

1. Sensitivity: each layer (the quantisable nodes of one module, e.g. one conformer FFN) is
   quantised ALONE, the model scores the search clips, and its cost is the ranking agreement it
   loses against FP32: (1 - SRCC) summed over MI and TA, ties broken by the relative drift.
2. Greedy: the most costly 1, 2, 4, ... layers stay FP32 (everything else quantised) until the
   whole model meets the tolerance on the search clips. At least one layer stays INT8: when
   even that misses, the search has failed, and says so (its graph is not kept).
3. Speed: the kept layers cost time; the INT8 graph with and without them is timed against FP32
   on one batch of the search clips, so the report says what accuracy was bought for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..calibration.dataset import ClipSet
from ..calibration.quantize import int8_candidates, quantize
from ..runtime.audio import pad_waves
from ..runtime.backends import OrtBackend
from ..runtime.bundle import Bundle, graph_file_name
from ..runtime.compare import Comparison, compare_scores
from ..runtime.contract import AUDIO_ENCODER, TEXT_ENCODER, Tolerance
from ..runtime.scorer import Scorer
from ..runtime.text import PromptTokenizer
from .onnxio import save_onnx


@dataclass
class SearchResult:
    graph: str
    kept_fp32: list[str]                      # layers (module paths) kept in FP32
    kept_nodes: list[str]                     # their nodes
    sensitivity: dict[str, float]             # layer -> ranking cost when quantised alone
    comparison: Comparison                    # the final graph against FP32 on the search clips
    seconds_per_batch: dict[str, float] = field(default_factory=dict)   # fp32, int8 (all), int8 (searched)

    def to_dict(self) -> dict:
        return {"graph": self.graph, "kept_fp32": self.kept_fp32, "kept_nodes": self.kept_nodes,
                "sensitivity": self.sensitivity, "passed": self.comparison.passed,
                "failures": self.comparison.failures, "seconds_per_batch": self.seconds_per_batch,
                "search_clips": self.comparison.clips}


def layer_of(node_name: str) -> str:
    """The module a node belongs to: its name without the op ('/encoder/conformer/layers.0/ffn1');
    a node outside any module ('/encoder/Conv_3', a functional call) is a layer of its own, so
    that the search can keep it FP32 without its neighbours."""
    parts = node_name.strip("/").split("/")
    if len(parts) <= 2:
        return "/" + "/".join(parts)
    return "/" + "/".join(parts[:-2] if len(parts) > 3 else parts[:-1])


def quantisable_layers(fp32_path: Path, target: str = "x86-avx2", ops=None,
                       flops: dict[str, float] | None = None) -> dict[str, list[str]]:
    """The nodes an INT8 build for `target` with `ops` (and `flops`: int8_candidates) may quantise, by layer."""
    import onnx

    gemm, qdq = int8_candidates(onnx.load(str(fp32_path), load_external_data=False), target, ops, flops)
    layers: dict[str, list[str]] = {}
    for name in gemm + qdq:
        layers.setdefault(layer_of(name), []).append(name)
    return layers


def search_exclusions(bundle: Bundle, graph: str, ranges: dict, method: str, target: str, clips: ClipSet,
                      tolerance: Tolerance, say=lambda _: None, flops: dict[str, float] | None = None,
                      min_flop_share: float = 0.0, ops=None) -> SearchResult:
    """Find the layers of `graph` to keep FP32 so INT8 meets `tolerance` on `clips`; leaves the
    bundle's INT8 file of `graph` quantised accordingly. Given `flops` (per node, calibration/
    quantize.py's op_flops), layers are kept FP32 in order of ranking cost per FLOP, and a
    result with less than `min_flop_share` of the FLOPs left in INT8 is a failure: a graph
    that passes by being FP32 where the work is is not INT8."""
    fp32_path = bundle.graph_path(graph, "fp32")
    layers = quantisable_layers(fp32_path, target, ops, flops)
    all_nodes = [n for nodes in layers.values() for n in nodes]
    reference = _scores(bundle, "fp32", clips)
    recipe = (ranges, method, target, ops)
    quantised = lambda keep: _try(bundle, graph, recipe, clips, reference,  # noqa: E731
                                  [n for n in all_nodes if n not in keep], tolerance)
    kept: list[str] = []
    comparison = quantised(set())
    sensitivity = {} if comparison.passed else {
        layer: _ranking_cost(quantised(set(all_nodes) - set(nodes))) for layer, nodes in layers.items()}
    layer_flops = {layer: sum((flops or {}).get(n, 0.0) for n in nodes) for layer, nodes in layers.items()}
    total_flops = sum((flops or {}).values())
    per_flop = lambda layer: sensitivity[layer] / (layer_flops[layer] + 1e-9 * total_flops)  # noqa: E731
    order = sorted(sensitivity, key=lambda layer: -(per_flop(layer) if flops else sensitivity[layer]))
    int8_share = lambda kept: ((sum(layer_flops.values()) - sum(layer_flops[layer] for layer in kept))  # noqa: E731
                               / total_flops if flops else 1.0)     # of all FLOPs: the FP32 regions count too
    if order:
        say(f"{graph}: INT8 sensitivity of {len(layers)} layers (1 - SRCC, MI + TA): "
            + ", ".join(f"{layer} {sensitivity[layer]:.4f}" for layer in order[:5]))
    # At least one layer stays INT8: a graph with every layer FP32 is not an INT8 graph, and a
    # search that gets there has failed (it used to save the FP32 graph under the INT8 name).
    most = len(order) - 1
    count = 1
    while not comparison.passed and len(kept) < most:
        kept = order[:min(count, most)]
        comparison = quantised({n for layer in kept for n in layers[layer]})
        say(f"{graph}: {len(kept)} layer(s) kept FP32 -> {'PASS' if comparison.passed else '; '.join(comparison.failures)}")
        count *= 2
    if not comparison.passed:
        comparison.problems.append(f"{graph}: the INT8 search found no passing graph with any layer left in INT8 "
                                   f"({len(kept)} of {len(layers)} layers kept FP32 still miss the tolerance)")
    elif int8_share(kept) < min_flop_share:
        comparison.problems.append(f"{graph}: the passing graph keeps {int8_share(kept):.1%} of the FLOPs in INT8 "
                                   f"(< {min_flop_share:.0%}): {len(kept)} of {len(layers)} layers FP32; not INT8")
    kept_nodes = [n for layer in kept for n in layers[layer]]
    result = SearchResult(graph, kept, kept_nodes, sensitivity, comparison)
    if comparison.passed:
        result.seconds_per_batch = _speeds(bundle, graph, recipe, clips, all_nodes, kept_nodes)
    return result


def _try(bundle, graph, recipe, clips, reference, nodes, tolerance) -> Comparison:
    """Quantise only `nodes` of `graph`, write it as the bundle's INT8 file, score the clips."""
    _write(bundle, graph, recipe, nodes)
    candidate = _scores(bundle, "int8", clips)
    return compare_scores(reference, candidate, precision="int8", candidate_name="int8 (searched)",
                          reference_name="fp32", source=clips.source, tolerance=tolerance)


def _write(bundle, graph, recipe, nodes) -> None:
    """`graph` with only `nodes` quantised as its INT8 file (never none: that would be FP32);
    recipe: (ranges, method, target, ops) as quantize takes them."""
    ranges, method, target, ops = recipe
    if not nodes:
        raise ValueError(f"{graph}: no node to quantise; an INT8 file of the FP32 graph would be mislabelled")
    save_onnx(quantize(bundle.graph_path(graph, "fp32"), ranges, method, target, nodes=nodes, ops=ops),
              bundle.root / graph_file_name(graph, "int8"))


def _scores(bundle: Bundle, precision: str, clips: ClipSet) -> dict[str, np.ndarray]:
    with Scorer(bundle, OrtBackend(bundle, precision)) as scorer:
        scores = scorer.score_batch(clips.waves, clips.prompts, sample_rate=bundle.sample_rate)
    bad = [s.error for s in scores if not s.ok]
    if bad:
        raise ValueError(f"search clips could not be scored: {bad[0]}")
    return {"MI": np.array([s.mi for s in scores]), "TA": np.array([s.ta for s in scores])}


def _ranking_cost(comparison: Comparison) -> float:
    """Ranking agreement lost (1 - SRCC, MI + TA), with the relative drift as a tie-breaker."""
    scores = comparison.scores.values()
    return float(sum(1 - a.srcc for a in scores) + 1e-3 * sum(a.rel_noise for a in scores))


def _speeds(bundle, graph, recipe, clips, all_nodes, kept_nodes, repeats: int = 5) -> dict[str, float]:
    """Seconds per batch of `graph` alone: FP32, INT8 everywhere, INT8 as searched (left in place)."""
    if graph == TEXT_ENCODER.name:
        feeds = TEXT_ENCODER.feeds(*PromptTokenizer(bundle.tokenizer_file, bundle.max_tokens).encode(clips.prompts[:8]))
    else:
        feeds = AUDIO_ENCODER.feeds(*pad_waves([w[:bundle.window_samples] for w in clips.waves[:8]]))
    timings = {"fp32": _time(bundle, "fp32", graph, feeds, repeats)}
    _write(bundle, graph, recipe, all_nodes)
    timings["int8_all_layers"] = _time(bundle, "int8", graph, feeds, repeats)
    _write(bundle, graph, recipe, [n for n in all_nodes if n not in set(kept_nodes)])
    timings["int8_searched"] = _time(bundle, "int8", graph, feeds, repeats)
    return timings


def _time(bundle, precision, graph, feeds, repeats) -> float:
    backend = OrtBackend(bundle, precision)
    backend.run(graph, feeds)                          # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        backend.run(graph, feeds)
    return (time.perf_counter() - start) / repeats
