"""Frequency-max convolutions as integer GEMMs: INT8 that pays on a CPU.

musicnn's front-end filters read the one-channel log-mel and keep the maximum over frequency:
timbral ones (7 x 38 and 7 x 67, 204 filters; ~70 % of the default audio encoder's FLOPs) and
temporal ones (128, 64 and 32 frames x 1 bin, 51 filters; ~20 %). As QDQ convolutions ONNX
Runtime runs them slower than FP32 (im2col + an INT8 GEMM against its blocked FP32 direct
convolution, then the large [N, C, T, F] output dequantised before the maximum). Here each
becomes one MatMulInteger whose int32 accumulators are maximised over frequency before they are
scaled: the scale of an output channel is positive, so the maximum commutes with it, and the
bias is the same at every frequency. Two layouts, by the kernel's extent in time:

- short kernels (KT <= MAX_SHORT_KERNEL, the timbral filters): im2col in the graph.
      x [N, 1, T', F] -> codes [N, F, T'] -> KT shifted copies [N, KT*F, T] -> Gather the
      taps under each filter position -> cols [N, FO, KT*KF, T]
      MatMulInteger(weights u8 [C, KT*KF], cols s8) -> [N, FO, C, T] -> max over FO -> [N, C, T]
- one frequency bin, long kernels (the temporal filters): a Toeplitz weight matrix.
      codes [N, F, T'] cut into chunks of L = KT/2 frames; each window of 3 chunks (3L frames)
      holds every input of its chunk's L outputs:
      MatMulInteger(windows u8 [N, F, chunks, 3L], Toeplitz s8 [3L, C*L]) -> [N, F, chunks, C*L]
      -> max over F -> [N, C, chunks*L] -> the first T frames.
      1.5x the convolution's multiply-adds, in exchange for one large GEMM.

MLAS's fast INT8 kernels take an unsigned left operand and a signed right one (the other way
round it falls back to a generic kernel, 5x slower than FP32), so the unsigned operand has the
zero point 128. Measured on a 2-core Xeon (AVX-512 VNNI, AMX), 2 x 10 s windows, FP32 -> INT8:
7 x 38 filter 32.7 -> 13.4 ms, 7 x 67 23.9 -> 8.2 ms; 14 patches, 128 x 1 15.5 -> 5.4 ms,
64 x 1 9.5 -> 5.1 ms, 32 x 1 6.9 -> 4.8 ms.

On CPUs whose INT8 kernels add two products in int16 (x86 without VNNI: `int16_pairs`), the
unsigned operand keeps 7 bits, so no pair can saturate (2 x 127 x 128 < 2^15): the weights in
the im2col layout, the activations in the Toeplitz one. Measured on the default model (64
held-out clips, drift std / spread of MI): 7-bit timbral weights 0.066, 7-bit temporal weights
(the signed operand) 0.215, 7-bit temporal activations instead 0.059 (docs/measurements.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SHORT_KERNEL = 16     # frames: longer kernels need the one-bin (Toeplitz) layout
GEMM_OP = "MatMulInteger"


@dataclass(frozen=True)
class FrequencyMaxConv:
    """A Conv over a one-channel [N, 1, T, F] input whose only consumer is a ReduceMax over F."""

    conv: object          # onnx NodeProto
    reduce: object        # onnx NodeProto
    weight: np.ndarray    # [C, 1, KT, KF]
    bias: np.ndarray      # [C]

    @property
    def name(self) -> str:
        return self.conv.name


def _attr(node, name: str, default=None):
    from onnx import helper

    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def _reduce_axes(node, initializers: dict) -> list[int] | None:
    if node.op_type != "ReduceMax":
        return None
    if len(node.input) > 1 and node.input[1]:            # opset 18: axes is an input
        axes = initializers.get(node.input[1])
        return None if axes is None else [int(a) for a in axes.ravel()]
    return list(_attr(node, "axes", []) or [])


def find_frequency_max_convs(model, names=None) -> list[FrequencyMaxConv]:
    """The graph's convolutions that can run as integer GEMMs (optionally only those in `names`):
    weight and bias initializers, one input channel, group 1, stride 1, dilation 1, no padding,
    a kernel of at most MAX_SHORT_KERNEL frames or one bin wide, and the output read only by a
    ReduceMax over the last axis without keepdims."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    found = []
    for conv in model.graph.node:
        if conv.op_type != "Conv" or (names is not None and conv.name not in names):
            continue
        weight = init.get(conv.input[1])
        bias = init.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if weight is None or weight.ndim != 4 or weight.shape[1] != 1 or not (
                weight.shape[2] <= MAX_SHORT_KERNEL or weight.shape[3] == 1):
            continue
        if (_attr(conv, "group", 1) != 1 or any(_attr(conv, "pads", [0]) or [0])
                or set(_attr(conv, "strides", [1]) or [1]) != {1} or set(_attr(conv, "dilations", [1]) or [1]) != {1}
                or _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        readers = consumers.get(conv.output[0], [])
        if len(readers) != 1 or conv.output[0] in outputs:
            continue
        reduce = readers[0]
        if _reduce_axes(reduce, init) not in ([3], [-1]) or _attr(reduce, "keepdims", 1) != 0:
            continue
        found.append(FrequencyMaxConv(conv, reduce, weight.astype(np.float32),
                                      (bias if bias is not None else np.zeros(weight.shape[0])).astype(np.float32)))
    return found


def weight_codes(weight: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """[C, 1, KT, KF] -> (int codes [C, KT*KF] in +-(2^(bits-1) - 1), scale [C]): symmetric per channel."""
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    limit = 2 ** (bits - 1) - 1
    scale = np.abs(flat).max(axis=1) / limit
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(flat / scale[:, None]), -limit, limit).astype(np.int64), scale


def activation_scale(value_range, bits: int) -> float:
    """Symmetric per-tensor scale of an activation whose calibrated range is [lo, hi]."""
    bound = max(float(np.max(np.abs(np.asarray(v, np.float64)))) for v in value_range)
    return (bound if bound > 0 else 1.0) / (2 ** (bits - 1) - 1)


def is_short(match: FrequencyMaxConv) -> bool:
    return match.weight.shape[2] <= MAX_SHORT_KERNEL


class _Nodes:
    """Nodes and constants of one rewrite, their names under `prefix`."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.initializers = prefix, [], []

    def name(self, tag: str) -> str:
        return f"{self.prefix}/{tag}"

    def const(self, tag: str, value) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), self.const_name(tag)))
        return self.const_name(tag)

    def const_name(self, tag: str) -> str:      # constants apart from node outputs: one namespace in ONNX
        return self.name(f"const/{tag}")

    def add(self, op: str, inputs: list[str], tag: str, output: str | None = None, node_name: str | None = None,
            **attrs) -> str:
        from onnx import helper

        out = output or self.name(tag)
        self.nodes.append(helper.make_node(op, inputs, [out], name=node_name or self.name(tag), **attrs))
        return out

    def scalar(self, tag: str, value: int) -> str:
        return self.const(tag, np.array(value, np.int64))

    def ints(self, tag: str, *values: int) -> str:
        return self.const(tag, np.array(values, np.int64))


def _codes_by_frequency(g: _Nodes, source: str, scale: float, zero, highest: int | None = None) -> str:
    """x [N, 1, T', F] float -> 8-bit codes [N, F, T'] with zero point `zero` (at most `highest`)."""
    codes = g.add("QuantizeLinear", [source, g.const("x_scale", np.float32(scale)), g.const("x_zero", zero)], "quantize")
    if highest is not None:
        codes = g.add("Clip", [codes, g.const("lowest", np.zeros((), zero.dtype)), g.const("highest", zero.dtype.type(highest))],
                      "clip")
    codes = g.add("Squeeze", [codes, g.ints("axis1", 1)], "squeeze")
    return g.add("Transpose", [codes], "by_frequency", perm=[0, 2, 1])                       # [N, F, T']


def _finish(g: _Nodes, match: FrequencyMaxConv, peak: str, scale: np.ndarray) -> None:
    """int32 maxima [N, C, T] -> float, scaled per channel, plus the bias, as the ReduceMax's output."""
    from onnx import TensorProto

    value = g.add("Cast", [peak], "cast", to=TensorProto.FLOAT)
    value = g.add("Mul", [value, g.const("scale", scale.astype(np.float32)[:, None])], "scale")
    g.add("Add", [value, g.const("bias", match.bias[:, None].astype(np.float32))], "bias", output=match.reduce.output[0])


def _short_kernel_nodes(match: FrequencyMaxConv, value_range, int16_pairs: bool) -> _Nodes:
    """im2col layout: weights u8 (zero point 128; 7 bits, zero point 64, for int16 pairs) x taps s8."""
    _, _, kt, kf = match.weight.shape
    g = _Nodes(match.name + "/int8_gemm")
    bits = 7 if int16_pairs else 8
    codes, w_scale = weight_codes(match.weight, bits)
    x_scale = activation_scale(value_range, 8)
    xt = _codes_by_frequency(g, match.conv.input[0], x_scale, np.int8(0))                    # [N, F, T']
    shape = g.add("Shape", [xt], "shape")
    bins = g.add("Gather", [shape, g.scalar("freq_axis", 1)], "bins", axis=0)
    frames_in = g.add("Gather", [shape, g.scalar("time_axis", 2)], "frames_in", axis=0)
    frames = g.add("Sub", [frames_in, g.scalar("kt_lead", kt - 1)], "time_out")               # T = T' - KT + 1
    # row fo, tap (dt, df) of the stacked shifts [N, KT*F, T] -> dt*F + fo + df
    positions = g.add("Sub", [bins, g.scalar("kf_lead", kf - 1)], "positions")               # FO = F - KF + 1
    starts = g.add("Range", [g.scalar("zero", 0), positions, g.scalar("one", 1)], "starts")
    starts = g.add("Unsqueeze", [starts, g.ints("last", -1)], "starts_col")
    offsets = g.add("Mul", [g.const("shift_rows", np.arange(kt, dtype=np.int64)[:, None]), bins], "shift_offsets")
    offsets = g.add("Add", [offsets, g.const("kernel_bins", np.arange(kf, dtype=np.int64)[None, :])], "tap_grid")
    offsets = g.add("Reshape", [offsets, g.ints("taps", 1, kt * kf)], "tap_offsets")
    rows = g.add("Add", [starts, offsets], "rows")                                           # [FO, KT*KF]
    axis2 = g.ints("axis2", 2)
    shifted = []
    for dt in range(kt):       # the codes shifted by dt frames: small copies [N, F, T]
        first = g.ints(f"shift{dt}", dt)
        shifted.append(g.add("Slice", [xt, first, g.add("Add", [frames, first], f"end{dt}"), axis2], f"shifted{dt}"))
    stacked = g.add("Concat", shifted, "stacked", axis=1)                                    # [N, KT*F, T]
    cols = g.add("Gather", [stacked, rows], "cols", axis=1)                                  # [N, FO, KT*KF, T]
    zero = 2 ** (bits - 1)
    acc = g.add(GEMM_OP, [g.const("w", (codes + zero).astype(np.uint8)), cols, g.const("w_zero", np.uint8(zero)),
                          g.const_name("x_zero")], "acc", node_name=match.name)                    # [N, FO, C, T]
    _finish(g, match, g.add("ReduceMax", [acc], "max", axes=[1], keepdims=0), x_scale * w_scale)
    return g


def toeplitz(codes: np.ndarray, kt: int, chunk: int) -> np.ndarray:
    """Weight codes [C, KT] -> [W, C*L] with W = L * (1 + ceil((KT-1)/L)): column (c, r) holds
    filter c starting at row r, so window @ matrix gives the L outputs of a chunk."""
    channels = codes.shape[0]
    width = chunk * (1 + -(-(kt - 1) // chunk))
    matrix = np.zeros((width, channels, chunk), np.int64)
    for r in range(chunk):
        matrix[r:r + kt, :, r] = codes.T
    return matrix.reshape(width, channels * chunk)


def _one_bin_nodes(match: FrequencyMaxConv, value_range, int16_pairs: bool) -> _Nodes:
    """Toeplitz layout: windows u8 (zero point 128; 7 bits, zero point 64, for int16 pairs) x weights s8."""
    channels, _, kt, _ = match.weight.shape
    chunk = max(1, kt // 2)
    later = -(-(kt - 1) // chunk)                  # chunks after its own that a chunk's outputs read
    g = _Nodes(match.name + "/int8_gemm")
    codes, w_scale = weight_codes(match.weight)
    bits = 7 if int16_pairs else 8
    x_scale = activation_scale(value_range, bits)
    zero = np.uint8(2 ** (bits - 1))
    xt = _codes_by_frequency(g, match.conv.input[0], x_scale, zero, 2 * int(zero) - 1 if int16_pairs else None)   # [N, F, T']
    one = g.ints("one1", 1)
    frames_in = g.add("Gather", [g.add("Shape", [xt], "shape"), g.scalar("time_axis", 2)], "frames_in", axis=0)
    frames = g.add("Sub", [frames_in, g.scalar("kt_lead", kt - 1)], "time_out")               # T = T' - KT + 1
    chunk_c = g.scalar("chunk", chunk)
    chunks = g.add("Div", [g.add("Add", [frames, g.scalar("round_up", chunk - 1)], "frames_up"), chunk_c], "chunks")
    padded = g.add("Mul", [g.add("Add", [chunks, g.scalar("later", later)], "chunks_read"), chunk_c], "padded")
    pad = g.add("Reshape", [g.add("Sub", [padded, frames_in], "pad_frames"), one], "pad_end")
    pads = g.add("Concat", [g.const("pad_start", np.zeros(5, np.int64)), pad], "pads", axis=0)
    xp = g.add("Pad", [xt, pads, g.const_name("x_zero")], "padded_codes")                        # [N, F, (chunks+later)*L]
    chunks_1 = g.add("Reshape", [chunks, one], "chunks_1")
    rows = g.add("Concat", [g.ints("keep2", 0, 0),
                            g.add("Reshape", [g.name("chunks_read"), one], "chunks_read_1"),
                            g.ints("chunk_1", chunk)], "chunk_shape", axis=0)
    xr = g.add("Reshape", [xp, rows], "by_chunk")                                            # [N, F, chunks+later, L]
    axis2 = g.ints("axis2", 2)
    parts = []
    for j in range(later + 1):   # chunk i's window: chunks i .. i+later side by side
        first = g.ints(f"from{j}", j)
        parts.append(g.add("Slice", [xr, first, g.add("Add", [chunks_1, first], f"to{j}"), axis2], f"part{j}"))
    windows = g.add("Concat", parts, "windows", axis=3)                                      # [N, F, chunks, W]
    acc = g.add(GEMM_OP, [windows, g.const("w", toeplitz(codes, kt, chunk).astype(np.int8)), g.const_name("x_zero")],
                "acc", node_name=match.name)                                                 # [N, F, chunks, C*L]
    peak = g.add("ReduceMax", [acc], "max", axes=[1], keepdims=0)                             # [N, chunks, C*L]
    peak = g.add("Reshape", [peak, g.ints("split", 0, 0, channels, chunk)], "split")
    peak = g.add("Transpose", [peak], "by_channel", perm=[0, 2, 1, 3])                       # [N, C, chunks, L]
    peak = g.add("Reshape", [peak, g.ints("join", 0, channels, -1)], "join")
    peak = g.add("Slice", [peak, g.ints("start", 0),
                           g.add("Reshape", [frames, one], "frames_1"), axis2], "first_frames")   # [N, C, T]
    _finish(g, match, peak, x_scale * w_scale)
    return g


def integer_gemm_nodes(match: FrequencyMaxConv, ranges: dict, int16_pairs: bool = False):
    """(nodes, initializers) computing match.reduce's output from match.conv's input."""
    build = _short_kernel_nodes if is_short(match) else _one_bin_nodes
    built = build(match, ranges[match.conv.input[0]], int16_pairs)
    return built.nodes, built.initializers


def rewrite_frequency_max_convs(model, ranges: dict, int16_pairs: bool = False, names=None) -> list[str]:
    """Replace, in place, every frequency-max convolution of `model` (only those in `names`, when
    given) whose input has a calibrated range by its integer GEMM; the rewritten convolutions'
    names (each GEMM node keeps its convolution's name)."""
    replaced: dict[str, list] = {}        # ReduceMax name -> the nodes in its place
    dropped: set[str] = set()
    rewritten = []
    for match in find_frequency_max_convs(model, names):
        if match.conv.input[0] not in ranges or not match.conv.name or not match.reduce.name:
            continue
        nodes, initializers = integer_gemm_nodes(match, ranges, int16_pairs)
        replaced[match.reduce.name] = nodes
        dropped.add(match.conv.name)
        model.graph.initializer.extend(initializers)
        rewritten.append(match.name)
    order = []
    for node in model.graph.node:
        if node.name in dropped:
            continue
        order += replaced.get(node.name, [node]) if node.op_type == "ReduceMax" else [node]
    del model.graph.node[:]
    model.graph.node.extend(order)
    used = {name for node in order for name in node.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for tensor in unused:                   # the convolutions' FP32 weights
        model.graph.initializer.remove(tensor)
    return rewritten
