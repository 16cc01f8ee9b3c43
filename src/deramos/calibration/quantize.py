"""INT8 as QDQ graphs (ONNX Runtime static quantisation), with a reusable calibration cache.

Scheme (what TensorRT consumes from explicit-precision graphs): symmetric INT8 activations,
per-channel symmetric INT8 weights, a dedicated Q/DQ pair per consumer; weights in 7 bits
for x86 CPUs without VNNI (the `--int8-target`, runtime/targets.py says why).

Defaults, chosen for accuracy where it is cheap to keep it:
- quantised ops: MatMul, Gemm and Conv (where the FLOPs are);
- kept in FP32: the mel front-end (a dB scale over ~200 dB of range does not fit 8 bits),
  the text encoder (TA hinges on it, and a scoring loop encodes each prompt once: INT8 there
  cost the default model TA SRCC 0.90 vs FP32 for no measurable speed) and the heads graph
  (<1% of the FLOPs; its score-bin softmax decides MI/TA directly). An INT8 bundle's entries
  for those graphs point at their FP32 files.

The measured ranges are stored as `calibration/<graph>.ranges.json`, keyed by the FP32 graph's
sha256 and the method: the next export reuses them unless `--recalibrate`; a cache whose graph
hash or method does not match is rebuilt.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..runtime.audio import pad_waves
from ..runtime.bundle import sha256_file
from ..runtime.contract import AUDIO_ENCODER, INT8_GRAPHS, TEXT_ENCODER, fp32_kept_prefixes
from ..runtime.targets import int8_scheme
from ..runtime.text import PromptTokenizer
from .conv_gemm import GEMM_OP, find_frequency_max_convs, rewrite_frequency_max_convs

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
# What an INT8 build may quantise (`--int8-ops`): QDQ matrix products, QDQ convolutions, and on
# CPU targets frequency-max convolutions as integer GEMMs (conv_gemm.py). Default per target
# (runtime/targets.py): matmul + conv-gemm on CPUs, matmul + conv for TensorRT.
INT8_OPS = {"matmul": ("MatMul", "Gemm"), "conv": ("Conv",), "conv-gemm": ()}


def int8_ops(target: str, ops=None) -> tuple[str, ...]:
    """The op kinds an INT8 build for `target` quantises: `ops`, else the target's default."""
    return tuple(ops) if ops else int8_scheme(target).default_ops
METHODS = ("minmax", "entropy", "percentile")
CACHE_VERSION = 1


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


class FeedReader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # ORT >= 1.17 asks for it
        pass


def encoder_feeds(clips, tokenizer: PromptTokenizer, batch: int = 2, same_shapes: bool = False) -> dict[str, list[dict]]:
    """Feeds for the two encoders. `same_shapes`: every batch padded to one shape (ONNX Runtime's
    histogram calibrators, used by entropy and percentile, cannot stack tensors of varying shape)."""
    waves, prompts = list(clips.waves), list(clips.prompts)
    if same_shapes:
        while len(waves) % batch:              # fill the last batch with repeats
            waves.append(waves[len(waves) % len(clips.waves)])
            prompts.append(prompts[len(prompts) % len(clips.prompts)])
    width = max(len(w) for w in waves)
    ids_all, mask_all = tokenizer.encode(prompts)
    audio, text = [], []
    for start in range(0, len(waves), batch):
        wave, lengths = pad_waves(waves[start:start + batch], width if same_shapes else None)
        audio.append(AUDIO_ENCODER.feeds(wave, lengths))
        ids, mask = ids_all[start:start + batch], mask_all[start:start + batch]
        if not same_shapes:
            keep = int(mask.sum(axis=1).max())
            ids, mask = ids[:, :keep], mask[:, :keep]
        text.append(TEXT_ENCODER.feeds(ids, mask))
    return {AUDIO_ENCODER.name: audio, TEXT_ENCODER.name: text}


def ranges_path(out: Path, graph: str) -> Path:
    return out / "calibration" / f"{graph}.ranges.json"


def cache_key(graph_sha: str, method: str, calib: str | None, clips: int) -> dict:
    """What the ranges depend on: the graph, the method and the calibration data asked for."""
    return {"version": CACHE_VERSION, "graph_sha256": graph_sha, "method": method,
            "calib": str(Path(calib).resolve()) if calib else "synthetic", "clips": clips}


def load_ranges(path: Path, key: dict) -> dict | None:
    """The cached ranges, or None when absent, unreadable or made for another graph/method/data."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if any(cached.get(name) != value for name, value in key.items()):
        return None
    return cached.get("ranges")


def calibrate(fp32_path: Path, feeds: list[dict], method: str) -> dict[str, list[float]]:
    from onnxruntime.quantization import create_calibrator

    with tempfile.TemporaryDirectory() as tmp:
        # Only the inputs of the ops that get quantised: histogramming every tensor would include
        # the attention masks' huge constants (and take minutes for nothing).
        calibrator = create_calibrator(str(fp32_path), QUANTIZED_OPS, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_method(method),
                                       extra_options={"symmetric": True, "num_bins": 2048, "percentile": 99.99})
        # One batch per call: the calibrator reduces and drops its intermediate tensors after
        # each call, so memory stays at one batch's activations (paper preset: ~GBs per batch).
        for feed in feeds:
            calibrator.collect_data(FeedReader([feed]))
        tensors = calibrator.compute_data()
    # Ranges are scalars or per-channel arrays: stored as (nested) lists.
    return {name: [np.asarray(d.range_value[0], np.float32).tolist(), np.asarray(d.range_value[1], np.float32).tolist()]
            for name, d in tensors.data.items()}


# An integer GEMM adds ~20 nodes (quantise, shifted copies, im2col, maximum, scale) around its
# MatMulInteger; under this share of the graph's FLOPs its convolution is cheaper left FP32.
# The default model's patch-edge and end-padding timbral filters (0.02-0.54 % each, 12 of 22)
# cost 3x their FP32 time as integer GEMMs; without them INT8 ran 1.15x faster (AVX2-only EPYC,
# 6 interleaved rounds, range 1.03-1.21; docs/measurements.md). Since musicnn's constant filters
# went (9.3 GFLOP per window) the 10 kept are >= 1.04 % and the 12 dropped <= 0.81 %.
MIN_GEMM_FLOP_SHARE = 0.01


def int8_candidates(model, target: str, ops=None, flops: dict[str, float] | None = None) -> tuple[list[str], list[str]]:
    """(integer-GEMM convolutions, QDQ nodes): what `quantize` makes INT8 of an onnx model for
    `target` with `ops`, outside the FP32-kept region, by node name. Given `flops` (op_flops of
    the graph), convolutions under MIN_GEMM_FLOP_SHARE of them are not integer GEMMs."""
    kept, ops = fp32_kept_prefixes(), int8_ops(target, ops)
    gemm = []
    if "conv-gemm" in ops and int8_scheme(target).conv_gemm:
        gemm = [m.name for m in find_frequency_max_convs(model) if not m.name.startswith(kept)]
        if flops:
            total = sum(flops.values())
            gemm = [name for name in gemm if flops.get(name, 0.0) >= MIN_GEMM_FLOP_SHARE * total]
    qdq_types = {t for kind in ops for t in INT8_OPS[kind]}
    qdq = [n.name for n in model.graph.node
           if n.op_type in qdq_types and not n.name.startswith(kept) and n.name not in gemm]
    return gemm, qdq


def quantize(fp32_path: Path, ranges: dict[str, list[float]], method: str, target: str, nodes: list[str] | None = None,
             ops=None, flops: dict[str, float] | None = None):
    """The FP32 graph made INT8 for `target`'s scheme (runtime/targets.py): frequency-max
    convolutions as integer GEMMs on CPU targets, other ops as QDQ; an onnx ModelProto.
    `nodes`: quantise only these (None: every candidate of `ops` and `flops`, int8_candidates;
    `ops` None: the target's default)."""
    import onnx
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    scheme = int8_scheme(target)
    model = onnx.load(str(fp32_path), load_external_data=True)
    gemm, qdq = int8_candidates(model, target, ops, flops)
    chosen = set(gemm + qdq) if nodes is None else set(nodes) & set(gemm + qdq)
    if not chosen:
        raise ValueError(f"{Path(fp32_path).name}: nothing to quantise for {target} with --int8-ops "
                         f"{','.join(int8_ops(target, ops))}")
    rewritten = rewrite_frequency_max_convs(model, ranges, scheme.weight_bits == 7, names=chosen & set(gemm))
    qdq = [n for n in qdq if n in chosen]
    if not qdq:
        return model
    tensors = TensorsData(_method(method), {name: TensorData(lowest=np.asarray(lo, np.float32), highest=np.asarray(hi, np.float32))
                                            for name, (lo, hi) in ranges.items()})
    excluded = [n.name for n in model.graph.node if n.name not in qdq and n.name not in rewritten]
    quantizer = QDQQuantizer(model, True, scheme.weight_bits == 7, QuantType.QInt8, QuantType.QInt8, tensors,
                             qdq, excluded, QUANTIZED_OPS, {"ActivationSymmetric": True, "WeightSymmetric": True,
                                                           "DedicatedQDQPair": True})
    quantizer.quantize_model()
    return quantizer.model.model


def op_flops(fp32_path: Path, feeds: dict) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of each MatMul, Gemm and Conv of an FP32 graph on `feeds`,
    by node name: the graph is run once through ONNX Runtime with every such node's output
    (and first input) exposed, so the count follows the real shapes of a real input."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(fp32_path), load_external_data=False)
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    ops = [n for n in proto.graph.node if n.op_type in QUANTIZED_OPS]
    exposed = sorted({name for n in ops for name in (*n.input[:2], n.output[0])} - set(weights)
                     - {o.name for o in proto.graph.output} - {i.name for i in proto.graph.input})
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in exposed)
    # saved beside the graph: its external-data side file is named relative to it
    handle, probe = tempfile.mkstemp(prefix=".flops-", suffix=".onnx", dir=Path(fp32_path).parent)
    os.close(handle)
    try:
        onnx.save(proto, probe)
        session = ort.InferenceSession(probe, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        shapes = {name: list(value.shape) for name, value in zip(names, session.run(None, feeds))}
    finally:
        os.unlink(probe)
    shapes.update({name: list(value.shape) for name, value in feeds.items()})
    flops = {}
    for node in ops:
        out = int(np.prod(shapes[node.output[0]]))
        weight = weights.get(node.input[1]) or shapes.get(node.input[1])
        if node.op_type == "Conv":
            per_output = int(np.prod(weight[1:]))
        elif node.op_type == "Gemm":
            per_output = shapes[node.input[0]][-1] if not _attribute(node, "transA") else shapes[node.input[0]][0]
        else:
            per_output = shapes[node.input[0]][-1]
        flops[node.name] = 2.0 * out * per_output
    return flops


def _attribute(node, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def quantized_share(graph_path: Path, flops: dict[str, float] | None = None) -> dict:
    """How much of a graph is really INT8: QDQ node count, and of the quantisable ops (MatMul,
    Gemm, Conv outside the FP32-kept region) how many take a dequantised weight, with the
    share of their weight elements and, given `flops` (op_flops of the FP32 graph), of the
    FLOPs. A graph called int8 with no quantised op is not INT8."""
    import onnx

    proto = onnx.load(str(graph_path), load_external_data=False)
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    sizes = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    for node in proto.graph.node:          # follow a weight through its Q and DQ nodes (topological order)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] in sizes:
            sizes[node.output[0]] = sizes[node.input[0]]
    ops = [n for n in proto.graph.node
           if n.op_type in (*QUANTIZED_OPS, GEMM_OP) and not n.name.startswith(fp32_kept_prefixes())]
    # an integer GEMM (conv_gemm.py) is INT8 by construction; it keeps its convolution's name
    # and holds the weights as its first input
    weight = lambda node: next((sizes[i] for i in node.input[:2] if i in sizes), 0)
    quantized = [n for n in ops if n.op_type == GEMM_OP or (len(n.input) > 1 and n.input[1] in dequantized)]
    total = sum(weight(n) for n in ops)
    share = {"qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node),
             "integer_gemms": sum(n.op_type == GEMM_OP for n in ops),
             "quantized_ops": len(quantized), "quantizable_ops": len(ops),
             "quantized_weight_share": round(sum(weight(n) for n in quantized) / total, 4) if total else 0.0}
    if flops:   # of ALL the graph's MatMul/Gemm/Conv FLOPs, the FP32-kept region included
        share["quantized_flop_share"] = round(sum(flops.get(n.name, 0.0) for n in quantized) / sum(flops.values()), 4)
        share["gflop_per_window"] = round(sum(flops.values()) / 1e9, 3)
    return share


def int8_ranges(bundle, graph: str, options, clips_source, say) -> tuple[dict, bool]:
    """Ranges for one graph and whether they came from the cache (else calibrated and cached)."""
    fp32 = bundle.graph_path(graph, "fp32")
    key = cache_key(sha256_file(fp32), options.calib_method, options.calib, options.calib_clips)
    cache = ranges_path(bundle.root, graph)
    ranges = None if options.recalibrate else load_ranges(cache, key)
    if ranges is not None:
        say(f"{graph}: reusing calibration cache {cache.relative_to(bundle.root)}")
        return ranges, True
    clips = clips_source()
    tokenizer = PromptTokenizer(bundle.tokenizer_file, bundle.max_tokens)
    feeds = encoder_feeds(clips, tokenizer, same_shapes=options.calib_method != "minmax")
    ranges = calibrate(fp32, feeds[graph], options.calib_method)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(dict(key, ranges=ranges)))
    return ranges, False


def check_int8_options(options) -> None:
    if options.calib_method not in METHODS:
        raise ValueError(f"unknown calibration method {options.calib_method!r}; choose from {', '.join(METHODS)}")
    unknown_ops = set(options.int8_ops or ()) - set(INT8_OPS)
    if unknown_ops:
        raise ValueError(f"--int8-ops {','.join(options.int8_ops)}: choose one or more of {', '.join(INT8_OPS)}")
    unknown = set(options.int8_graphs) - set(INT8_GRAPHS)
    if unknown:
        raise ValueError(f"cannot quantise {sorted(unknown)}; choose from {', '.join(INT8_GRAPHS)}")
    int8_scheme(options.int8_target)
