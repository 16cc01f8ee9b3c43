"""The profile benchmark (deramos.bench.profile): kernel times read from ONNX Runtime's own trace,
fused kernels counted under their plain type with the FLOPs counted on the FP32 graph, and an
end-to-end run on the tiny bundle. Its numbers for the default model are in docs/measurements.md."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from deramos.bench.profile import FUSED, kernel_times, shares

pytest.importorskip("onnxruntime")


def _trace(events):
    """Two runs: the events with ts < 1000 fall in the first, the others in the second."""
    return [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 999},
            {"cat": "Session", "name": "model_run", "ts": 1000, "dur": 999}] + [
        {"cat": "Node", "name": f"{node}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}
        for node, op, ts, dur in events]


def test_kernel_times_sum_by_type_count_distinct_nodes_and_leave_out_the_warm_up():
    trace = _trace([("a", "Conv", 10, 500), ("a", "Conv", 1010, 50), ("b", "Conv", 1100, 30),
                    ("c", "ReduceMax", 1200, 20)])
    assert kernel_times(trace) == {"Conv": (580.0, 2), "ReduceMax": (20.0, 1)}
    assert kernel_times(trace, skip_runs=1) == {"Conv": (80.0, 2), "ReduceMax": (20.0, 1)}


def test_fused_kernels_count_as_their_plain_type():
    rows = shares({"Conv": (30.0, 2), "FusedConv": (10.0, 1), "ReorderOutput": (40.0, 3)}, {"Conv": 4e9})
    assert [(r.op, r.nodes) for r in rows] == [("Conv", 3), ("ReorderOutput", 3)]
    conv = rows[0]
    assert conv.share == pytest.approx(0.5) and conv.gflop_per_run == pytest.approx(4.0)
    assert conv.gflops == pytest.approx(4.0 / 0.040)          # 4 GFLOP in 40 ms
    assert rows[1].gflops is None


def test_flops_go_to_the_kernel_that_runs_the_node():
    from deramos.bench.profile import flops_by_kernel_type

    fp32 = {"/encoder/Conv": "Conv", "/encoder/Conv_1": "Conv", "/encoder/dense/MatMul": "MatMul"}
    int8 = {"/encoder/Conv": "MatMulInteger", "/encoder/Conv_1": "Conv", "/encoder/dense/MatMul": "MatMul"}
    counts = {"/encoder/Conv": 5e9, "/encoder/Conv_1": 1e9, "/encoder/dense/MatMul": 2e9}
    assert flops_by_kernel_type(counts, fp32, fp32) == {"Conv": 6e9, "MatMul": 2e9}
    assert flops_by_kernel_type(counts, fp32, int8) == {"Conv": 1e9, "MatMul": 7e9}     # the integer GEMM is a MatMul
    assert flops_by_kernel_type(counts, fp32, {}) == {"Conv": 6e9, "MatMul": 2e9}        # renamed nodes: FP32 type


def test_a_real_trace_of_a_real_graph(tmp_path):
    """ONNX Runtime's profiler on a one-Conv graph: the Conv is found, with a positive time."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 3, 3], np.ones(36, np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "trace")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {"x": np.ones((1, 1, 64, 64), np.float32)})
    times = kernel_times(json.loads(open(session.end_profiling()).read()))
    plain = {FUSED.get(op, op) for op in times}        # besides it: layout reorders, which vary by CPU
    assert "Conv" in plain and times[next(op for op in times if FUSED.get(op, op) == "Conv")][0] > 0


def test_the_profile_runs_on_a_small_bundle(runtime_bundle, tmp_path):
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, "-m", "deramos.bench.profile", "--bundle", str(runtime_bundle),
                           "--runs", "2", "--threads", "1", "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    profile = json.loads(out.read_text())
    assert (profile["batch"], profile["runs"], profile["threads"], profile["precision"]) == (2, 2, 1, "fp32")
    assert sum(o["share"] for o in profile["ops"]) == pytest.approx(1.0)
    assert any(o["gflop_per_run"] for o in profile["ops"]) and profile["matmul_gflops"] > 0
    assert "| operator | nodes | ms per run | share | GFLOP per run | GFLOP/s |" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "deramos.bench.profile", "--bundle", str(runtime_bundle),
                              "--precision", "int8"], capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].endswith("has no int8 graphs (it has fp32, fp16)")
