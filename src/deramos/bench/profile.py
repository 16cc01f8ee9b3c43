"""Where the audio encoder's time goes: ONNX Runtime's own profile of one graph, by operator type.

    python -m deramos.bench.profile [--bundle B] [--precision fp32] [--batch 2] [--runs 5] [--json F]

Runs the bundle's audio encoder on `--batch` full windows (deterministic noise: the cost does not
depend on the sound) with ONNX Runtime's profiler on, after one warm-up run, and sums every
node's kernel time by operator type. Beside each type: its share of the time and, for the
operators that do the arithmetic (Conv, MatMul, Gemm, counted on the FP32 graph by
calibration.quantize.op_flops), GFLOP per run and the rate they reach, against this machine's
FP32 matmul rate measured in the same run. This is the measured profile behind issue 20's speed
figures: what the graph spends outside its arithmetic, and how close the arithmetic runs to the
machine's peak.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from ..runtime.cli_common import Command, errors_as_messages, stderr_line
from ..runtime.contract import AUDIO_ENCODER
from ..runtime.threads import check_threads

ARITHMETIC = ("Conv", "MatMul", "Gemm")
# ONNX Runtime fuses an activation into the op before it and renames the type; the FLOPs
# (counted on the FP32 graph's own nodes) belong to the fused kernel as much as to the plain one.
# An INT8 graph's integer kernels count under the plain type too (their FLOPs are the same).
FUSED = {"FusedConv": "Conv", "FusedMatMul": "MatMul", "FusedGemm": "Gemm", "NchwcConv": "Conv",
         "QLinearConv": "Conv", "ConvInteger": "Conv", "QLinearMatMul": "MatMul", "MatMulInteger": "MatMul"}


@dataclass
class OpShare:
    op: str
    nodes: int
    ms_per_run: float
    share: float                 # of the summed kernel time
    gflop_per_run: float | None  # Conv/MatMul/Gemm only
    gflops: float | None         # the rate those reach


@dataclass
class Profile:
    precision: str
    batch: int
    window_seconds: float
    runs: int
    threads: int
    kernel_ms_per_run: float
    matmul_gflops: float
    ops: list[OpShare]

    def arithmetic_rate(self) -> float:
        """GFLOP/s over the whole kernel time: the graph's FLOPs against everything it does."""
        flop = sum(o.gflop_per_run or 0.0 for o in self.ops)
        return flop / (self.kernel_ms_per_run / 1e3)


def kernel_times(trace: list[dict], skip_runs: int = 0) -> dict[str, tuple[float, int]]:
    """Operator type -> (summed kernel microseconds, distinct nodes), from an ORT profile's events,
    leaving out the kernels of the first `skip_runs` runs (warm-up)."""
    runs = sorted((e["ts"] + e["dur"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"))
    after = runs[skip_runs - 1] if skip_runs else float("-inf")
    total: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for event in trace:
        if (event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
                and event.get("ts", 0) >= after):
            op = event.get("args", {}).get("op_name", "?")
            total[op] += float(event["dur"])
            nodes[op].add(event["name"])
    return {op: (total[op], len(nodes[op])) for op in total}


def node_op_types(graph_path: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(graph_path), load_external_data=False)
    return {node.name: node.op_type for node in proto.graph.node}


def flops_by_kernel_type(flops_by_node: dict[str, float], fp32_types: dict[str, str],
                         precision_types: dict[str, str]) -> dict[str, float]:
    """FP32 FLOPs per node -> per plain kernel type of the graph that runs: a node counts under
    its type in this precision's graph (an integer GEMM keeps its convolution's name,
    calibration/conv_gemm.py: its FLOPs are the MatMul row's), else under its FP32 type."""
    flops: dict[str, float] = defaultdict(float)
    for node, count in flops_by_node.items():
        kind = precision_types.get(node, fp32_types.get(node, "?"))
        flops[FUSED.get(kind, kind)] += count
    return dict(flops)


def profile_audio_encoder(bundle, precision: str, batch: int, runs: int, threads: int) -> Profile:
    import onnxruntime as ort

    from ..calibration.quantize import op_flops
    from .worker import matmul_gflops

    rng = np.random.default_rng(0)
    window = bundle.window_samples
    feeds = AUDIO_ENCODER.feeds((0.1 * rng.standard_normal((batch, window))).astype(np.float32),
                                np.full(batch, window, np.int64))
    flops_by_node = op_flops(bundle.graph_path(AUDIO_ENCODER.name, "fp32"), feeds)
    flops = flops_by_kernel_type(flops_by_node, node_op_types(bundle.graph_path(AUDIO_ENCODER.name, "fp32")),
                                 node_op_types(bundle.graph_path(AUDIO_ENCODER.name, precision)))
    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.enable_profiling, options.profile_file_prefix = True, str(Path(scratch) / "profile")
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(bundle.graph_path(AUDIO_ENCODER.name, precision)), options,
                                       providers=["CPUExecutionProvider"])
        for _ in range(1 + runs):                    # the first is a warm-up, left out of the sums
            session.run(None, feeds)
        measured = kernel_times(json.loads(Path(session.end_profiling()).read_text()), skip_runs=1)
    times = {op: (us / runs / 1e3, nodes) for op, (us, nodes) in measured.items()}
    return Profile(precision, batch, bundle.window_seconds, runs, threads, sum(ms for ms, _ in times.values()),
                   matmul_gflops(threads), shares(times, flops))


def shares(times: dict[str, tuple[float, int]], flops: dict[str, float]) -> list[OpShare]:
    """Per operator type (fused kernels under their plain type), slowest first, with the FLOPs
    and rate of the arithmetic ones."""
    merged: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for op, (ms, nodes) in times.items():
        merged[FUSED.get(op, op)][0] += ms
        merged[FUSED.get(op, op)][1] += nodes
    total = sum(ms for ms, _ in merged.values())
    return [OpShare(op, nodes, ms, ms / total, flops[op] / 1e9 if op in flops else None,
                    flops[op] / 1e9 / (ms / 1e3) if op in flops and ms > 0 else None)
            for op, (ms, nodes) in sorted(merged.items(), key=lambda item: -item[1][0])]


def table(profile: Profile, top: int = 12) -> str:
    lines = [f"audio encoder, {profile.precision}, {profile.batch} x {profile.window_seconds:g} s windows, "
             f"{profile.threads} threads: {profile.kernel_ms_per_run:.0f} ms of kernels per run",
             "| operator | nodes | ms per run | share | GFLOP per run | GFLOP/s |", "|---|---|---|---|---|---|"]
    for o in profile.ops[:top]:
        gflop = "—" if o.gflop_per_run is None else f"{o.gflop_per_run:.1f}"
        rate = "—" if o.gflops is None else f"{o.gflops:.0f}"
        lines.append(f"| {o.op} | {o.nodes} | {o.ms_per_run:.1f} | {o.share:.1%} | {gflop} | {rate} |")
    lines.append(f"machine FP32 matmul: {profile.matmul_gflops:.0f} GFLOP/s; the graph's arithmetic over all of "
                 f"its kernel time: {profile.arithmetic_rate():.0f} GFLOP/s "
                 f"({profile.arithmetic_rate() / profile.matmul_gflops:.0%} of it)")
    return "\n".join(lines)


@click.command(cls=Command, help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", help="Bundle to profile (default: the default model's, exported on first use).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--batch", type=click.IntRange(1), default=2, show_default=True,
              help="Windows per run (the Scorer runs a CPU's audio encoder 2 at a time).")
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(1), help="Intra-op threads [all cores].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the profile here.")
def main(bundle, precision, batch, runs, threads, json_out):
    import os

    from ..runtime.bundle import load_bundle
    from ..runtime.default import resolve_bundle_dir

    with errors_as_messages(ValueError, OSError):
        loaded = load_bundle(resolve_bundle_dir(bundle, say=stderr_line))
        if precision not in loaded.precisions():
            raise ValueError(f"{loaded.root}: has no {precision} graphs (it has {', '.join(loaded.precisions())})")
        threads = check_threads(threads) or len(os.sched_getaffinity(0))
        result = profile_audio_encoder(loaded, precision, batch, runs, threads)
    click.echo(table(result))
    if json_out:
        json_out.write_text(json.dumps(asdict(result), indent=1) + "\n")


if __name__ == "__main__":
    main()
