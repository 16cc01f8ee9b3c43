"""The graph contract: one GraphSpec per bundle graph (Optimum's OnnxConfig is the model).

Everything that produces or consumes a graph reads it from here: the torch export (names,
dynamic axes, example input shapes), the build stage (what stays FP32 in FP16/INT8, which
graphs INT8 may quantise), TensorRT (shape profiles), the runtime (names it feeds and reads)
and the benchmarks. So do the one rounding rule for lengths in samples, the one tolerance
table every comparison gates on (runtime/compare.py), and example inputs for every graph
(`GraphSpec.example_feeds`): no other file spells a tensor name.

    audio_encoder   waveform [B, N] f32, lengths [B] i64 -> frames [B, T, Da] f32, frame_mask [B, T] bool
    text_encoder    input_ids, attention_mask [B, L] i64  -> tokens [B, L, Dt] f32
    heads           frames, frame_mask, tokens, token_mask -> mi, ta [B] f32, mi_dist, ta_dist [B, K] f32
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

# What example_feeds fills an input with (Optimum's dummy-input generators, one per kind).
VALUES, LENGTHS, IDS, MASK = "values", "lengths", "ids", "mask"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                        # numpy dtype name
    axes: tuple                       # an axis name (dynamic) or a size name fixed by the model config
    role: str = VALUES                # VALUES, LENGTHS (valid entries of the axis `counts`), IDS, MASK
    counts: str = ""                  # LENGTHS only: the axis whose valid entries it counts


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

    def shapes(self, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """Input shapes for given axis sizes (`axis_sizes`)."""
        return {t.name: tuple(sizes[a] for a in t.axes) for t in self.inputs}

    def feeds(self, *values) -> dict:
        """The graph's inputs, given in the spec's order (its graph function's), named."""
        if len(values) != len(self.inputs):
            raise ValueError(f"{self.name} takes {len(self.inputs)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(values)}")
        return dict(zip(self.input_names, values))

    def inputs_of(self, tensors: Mapping) -> tuple:
        """The graph's inputs out of a mapping that holds them (and maybe more), in order."""
        return tuple(tensors[name] for name in self.input_names)

    def outputs_of(self, outputs: Mapping) -> tuple:
        """A run's outputs (backend.run's dict), in the spec's order."""
        return tuple(outputs[name] for name in self.output_names)

    def example_feeds(self, batch: int, sizes: Mapping[str, int], seed: int = 0,
                      vocab: int = 1000) -> dict[str, np.ndarray]:
        """Inputs of `batch` rows for the axis `sizes` (`axis_sizes`), the same for the same seed.
        Row 0 is full length, the others 2/3 of it, so that the masking paths run (and a torch
        trace records them); token ids are drawn below `vocab`, above the special tokens."""
        rng = np.random.default_rng(seed)
        shapes = self.shapes({**sizes, "batch": batch})
        return {t.name: _example(t, shapes[t.name], sizes, rng, vocab) for t in self.inputs}


def _valid_counts(rows: int, size: int) -> np.ndarray:
    return np.array([size] + [max(1, size * 2 // 3)] * (rows - 1), np.int64)


def _example(tensor: TensorSpec, shape: tuple[int, ...], sizes: Mapping[str, int], rng, vocab: int) -> np.ndarray:
    if tensor.role == LENGTHS:
        return _valid_counts(shape[0], sizes[tensor.counts]).astype(tensor.dtype)
    if tensor.role == MASK:
        valid = _valid_counts(shape[0], shape[1])
        return (np.arange(shape[1])[None, :] < valid[:, None]).astype(tensor.dtype)
    if tensor.role == IDS:   # past the special tokens (0-4), within any vocabulary
        return rng.integers(min(5, vocab - 1), min(1000, vocab), shape).astype(tensor.dtype)
    return (rng.standard_normal(shape) * 0.1).astype(tensor.dtype)   # audio-like scale: well inside [-1, 1]


def axis_sizes(*, batch: int | None = None, samples: int | None = None, samples_per_frame: int | None = None,
               tokens: int | None = None, audio_dim: int | None = None, text_dim: int | None = None) -> dict[str, int]:
    """The named axes' sizes (those given); the frames follow from the samples: one per
    `samples_per_frame`, at least one."""
    sizes = {"batch": batch, "samples": samples, "tokens": tokens, "audio_dim": audio_dim, "text_dim": text_dim}
    if samples is not None and samples_per_frame:
        sizes["frames"] = max(1, samples // samples_per_frame)
    return {axis: size for axis, size in sizes.items() if size is not None}


DYNAMIC = ("batch", "samples", "frames", "tokens")
FRONTEND_PREFIX = "/encoder/frontend/"      # the mel front-end: a dB scale over ~200 dB does not fit 8 or 16 bits
# musicnn's tempo/tonality features: pitch-bank power and onset autocorrelation sums overflow FP16
TEMPO_TONALITY_PREFIX = "/encoder/tempo_tonality/"

AUDIO_ENCODER = GraphSpec(
    "audio_encoder",
    (TensorSpec("waveform", "float32", ("batch", "samples")),
     TensorSpec("lengths", "int64", ("batch",), LENGTHS, counts="samples")),
    (TensorSpec("frames", "float32", ("batch", "frames", "audio_dim")),
     TensorSpec("frame_mask", "bool", ("batch", "frames"), MASK)),
    fp32_node_prefixes=(FRONTEND_PREFIX, TEMPO_TONALITY_PREFIX), int8="default")
TEXT_ENCODER = GraphSpec(
    "text_encoder",
    (TensorSpec("input_ids", "int64", ("batch", "tokens"), IDS),
     TensorSpec("attention_mask", "int64", ("batch", "tokens"), MASK)),
    (TensorSpec("tokens", "float32", ("batch", "tokens", "text_dim")),),
    int8="optional")   # INT8 cost the default model TA SRCC 0.90, and a scoring loop encodes a prompt once
HEADS = GraphSpec(
    "heads",
    (TensorSpec("frames", "float32", ("batch", "frames", "audio_dim")),
     TensorSpec("frame_mask", "bool", ("batch", "frames"), MASK),
     TensorSpec("tokens", "float32", ("batch", "tokens", "text_dim")),
     TensorSpec("token_mask", "int64", ("batch", "tokens"), MASK)),
    (TensorSpec("mi", "float32", ("batch",)), TensorSpec("ta", "float32", ("batch",)),
     TensorSpec("mi_dist", "float32", ("batch", "bins")), TensorSpec("ta_dist", "float32", ("batch", "bins"))))
SPECS: dict[str, GraphSpec] = {spec.name: spec for spec in (AUDIO_ENCODER, TEXT_ENCODER, HEADS)}
GRAPHS = tuple(SPECS)
GRAPH_IO = {g: (s.input_names, s.output_names) for g, s in SPECS.items()}
INT8_DEFAULT_GRAPHS = tuple(g for g, s in SPECS.items() if s.int8 == "default")
INT8_GRAPHS = tuple(g for g, s in SPECS.items() if s.int8 != "never")
PRECISIONS = ("fp32", "fp16", "int8")
# The graphs run as one pipeline (a Triton ensemble wires them so): an input fed from an input
# of another graph, not from an output of the same name. The heads mask padded tokens as the
# text encoder did.
PIPELINE_RENAMES = {"heads": {"token_mask": "attention_mask"}}


def fp32_kept_prefixes() -> tuple[str, ...]:
    """Node-name prefixes kept FP32 in FP16 and INT8 graphs, every graph's together (sorted)."""
    return tuple(sorted({p for spec in SPECS.values() for p in spec.fp32_node_prefixes}))


@dataclass(frozen=True)
class Tolerance:
    """What a candidate must meet against its reference (None: not checked). Scores are MI and
    TA on the 1-5 scale; min_cosine gates each encoder's output (per frame, per token) where the
    graphs were compared on identical inputs."""

    max_abs: float | None = None
    mae: float | None = None
    rel_noise: float | None = None   # std of the differences / std of the reference scores
    srcc: float | None = None        # checked when the reference spread >= runtime/compare.py's MIN_SPREAD
    min_cosine: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def tightened(self, margin: float) -> "Tolerance":
        """Stricter by `margin` (0: as is, 0.3: 30 % of each allowance taken away): every error
        bound times 1 - margin, and each similarity's allowed shortfall from 1 likewise."""
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin {margin}: must be in [0, 1)")
        scale = lambda v: None if v is None else v * (1.0 - margin)  # noqa: E731
        closer = lambda v: None if v is None else 1.0 - (1.0 - v) * (1.0 - margin)  # noqa: E731
        return Tolerance(max_abs=scale(self.max_abs), mae=scale(self.mae), rel_noise=scale(self.rel_noise),
                         srcc=closer(self.srcc), min_cosine=closer(self.min_cosine))


# Per precision, against FP32 (FP32 itself: the export against the PyTorch model it came from,
# whose front-end runs in float64, and a TensorRT FP32 engine against ONNX Runtime).
TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-3, min_cosine=0.9999),
    "fp16": Tolerance(max_abs=0.05, rel_noise=0.1, srcc=0.99),
    "int8": Tolerance(mae=0.15, rel_noise=0.2, srcc=0.97),
}


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
