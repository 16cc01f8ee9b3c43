"""The graph contract: one GraphSpec per bundle graph (Optimum's OnnxConfig is the model).

Everything that produces or consumes a graph reads it from here: the torch export (names,
dynamic axes, example input shapes), the build stage (what stays FP32 in FP16/INT8, which
graphs INT8 may quantise), TensorRT (shape profiles), the runtime (names it feeds and reads)
and the benchmarks. So does the one rounding rule for lengths in samples.

    audio_encoder   waveform [B, N] f32, lengths [B] i64 -> frames [B, T, Da] f32, frame_mask [B, T] bool
    text_encoder    input_ids, attention_mask [B, L] i64  -> tokens [B, L, Dt] f32
    heads           frames, frame_mask, tokens, token_mask -> mi, ta [B] f32, mi_dist, ta_dist [B, K] f32
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                        # numpy dtype name
    axes: tuple                       # an axis name (dynamic) or a size name fixed by the model config


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fp32_node_prefixes: tuple[str, ...] = ()   # node-name prefixes kept FP32 in FP16 and INT8 graphs
    int8: str = "never"                        # "default": quantised unless asked otherwise; "optional"; "never"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor: {axis index: axis name}} for every dynamic axis (torch.onnx.export's form)."""
        return {t.name: {i: a for i, a in enumerate(t.axes) if a in DYNAMIC}
                for t in (*self.inputs, *self.outputs) if any(a in DYNAMIC for a in t.axes)}

    def shapes(self, sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
        """Input shapes for given axis sizes (batch, samples, frames, tokens, audio_dim, text_dim)."""
        return {t.name: tuple(sizes[a] for a in t.axes) for t in self.inputs}


DYNAMIC = ("batch", "samples", "frames", "tokens")
FRONTEND_PREFIX = "/encoder/frontend/"      # the mel front-end: a dB scale over ~200 dB does not fit 8 or 16 bits
# musicnn's tempo/tonality features: pitch-bank power and onset autocorrelation sums overflow FP16
TEMPO_TONALITY_PREFIX = "/encoder/tempo_tonality/"

SPECS: dict[str, GraphSpec] = {
    "audio_encoder": GraphSpec(
        "audio_encoder",
        (TensorSpec("waveform", "float32", ("batch", "samples")), TensorSpec("lengths", "int64", ("batch",))),
        (TensorSpec("frames", "float32", ("batch", "frames", "audio_dim")),
         TensorSpec("frame_mask", "bool", ("batch", "frames"))),
        fp32_node_prefixes=(FRONTEND_PREFIX, TEMPO_TONALITY_PREFIX), int8="default"),
    "text_encoder": GraphSpec(
        "text_encoder",
        (TensorSpec("input_ids", "int64", ("batch", "tokens")), TensorSpec("attention_mask", "int64", ("batch", "tokens"))),
        (TensorSpec("tokens", "float32", ("batch", "tokens", "text_dim")),),
        int8="optional"),   # INT8 cost the default model TA SRCC 0.90, and a scoring loop encodes a prompt once
    "heads": GraphSpec(
        "heads",
        (TensorSpec("frames", "float32", ("batch", "frames", "audio_dim")),
         TensorSpec("frame_mask", "bool", ("batch", "frames")),
         TensorSpec("tokens", "float32", ("batch", "tokens", "text_dim")),
         TensorSpec("token_mask", "int64", ("batch", "tokens"))),
        (TensorSpec("mi", "float32", ("batch",)), TensorSpec("ta", "float32", ("batch",)),
         TensorSpec("mi_dist", "float32", ("batch", "bins")), TensorSpec("ta_dist", "float32", ("batch", "bins")))),
}
GRAPHS = tuple(SPECS)
GRAPH_IO = {g: (s.input_names, s.output_names) for g, s in SPECS.items()}
INT8_DEFAULT_GRAPHS = tuple(g for g, s in SPECS.items() if s.int8 == "default")
INT8_GRAPHS = tuple(g for g, s in SPECS.items() if s.int8 != "never")
PRECISIONS = ("fp32", "fp16", "int8")


def graph_file_name(graph: str, precision: str) -> str:
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


# A graph whose weights pass this size keeps them in one side file, `<graph file>.data`. Protobuf
# caps a graph at 2 GB, and ONNX Runtime opens a graph with external weights in half the time
# (the 90 MB MiniLM text encoder: 0.09 vs 0.18 s CPU), which is most of a warm `deramos-run`.
EXTERNAL_DATA_MIN_BYTES = 16 << 20


def external_data_file_name(graph_file: str) -> str:
    return f"{graph_file}.data"


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """The one rounding rule for a length in seconds (window, profile, crop) as samples."""
    return int(round(float(seconds) * int(sample_rate)))
